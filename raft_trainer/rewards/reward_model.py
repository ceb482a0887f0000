import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import apply_chat_template, is_conversational

from ..sequences import load_tokenizer


class RewardModel:
    """A sequence-classification reward model (`num_labels=1`) used as a reward function.

    Called like any reward function (`prompts=`, `completions=`, ...), it scores prompt + completion in batches,
    without gradients, and exactly in the form TRL's `RewardTrainer` trains reward models on: plain text gets the
    eos token appended and the tokenizer's usual special tokens; chat candidates are rendered with the reward
    tokenizer's chat template.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 64,
        show_progress: bool = True,
    ):
        if model.config.num_labels != 1:
            raise ValueError(
                f"reward model {model.name_or_path!r} has num_labels={model.config.num_labels}; a reward model must "
                "output one score per sequence (num_labels=1)."
            )
        tokenizer = load_tokenizer(model.name_or_path, tokenizer)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.__name__ = model.name_or_path.rstrip("/").split("/")[-1] or type(model).__name__

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, batch_size: int = 64, show_progress: bool = True, **model_init_kwargs
    ) -> "RewardModel":
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1, **model_init_kwargs)
        trust_remote_code = model_init_kwargs.get("trust_remote_code", False)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, batch_size, show_progress)

    def to(self, device) -> "RewardModel":
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list, **_) -> list[float]:
        conversational = is_conversational({"prompt": prompts[0]})
        if conversational:
            texts = [
                apply_chat_template({"messages": prompt + completion}, self.tokenizer)["text"]
                for prompt, completion in zip(prompts, completions, strict=True)
            ]
        else:
            eos = self.tokenizer.eos_token or ""
            texts = [prompt + completion + eos for prompt, completion in zip(prompts, completions, strict=True)]
        scores = []
        batches = range(0, len(texts), self.batch_size)
        for start in tqdm(batches, desc=f"Scoring ({self.__name__})", disable=not self.show_progress, leave=False):
            inputs = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                padding_side="right",
                add_special_tokens=not conversational,
            ).to(self.model.device)
            scores.extend(self.model(**inputs).logits[:, 0].float().tolist())
        return scores
