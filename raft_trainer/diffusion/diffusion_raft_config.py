from dataclasses import dataclass, field

from ..stage_config import StageConfig, keyword_arguments, require
from .flow_matching import WEIGHTING_SCHEMES


@dataclass
class DiffusionRAFTConfig(StageConfig):
    r"""
    Configuration of [`DiffusionRAFTTrainer`]: RAFT for a LoRA on the UNet (SD 1.x / 2.x, SDXL) or the transformer
    (SD3 / SD3.5, FLUX.1) of a diffusers pipeline.

    The stage fields (`num_stages`, `prompts_per_stage`, `num_generations`, `ranking`, `reward_weights`, ...) are
    those of [`StageConfig`]; the `TrainingArguments` fields apply but `max_steps` (refused; `num_train_epochs` is
    set to `num_stages`), and `per_device_train_batch_size` is the number of images per training step.

    Parameters:
        height (`int` or `None`, *optional*, defaults to `None`):
            Height of the generated images, a multiple of 8; `None` uses the pipeline's own default size (its
            denoiser's sample size times the VAE factor: 512 for SD 1.5, 768 for SD 2.1, 1024 for SDXL, SD3 and
            FLUX.1).
        width (`int` or `None`, *optional*, defaults to `None`):
            Width of the generated images, a multiple of 8; `None` as for `height`.
        num_inference_steps (`int` or `None`, *optional*, defaults to `None`):
            Denoising steps when generating candidates; `None` uses the pipeline's default (50 for SD 1.x / 2.x and
            SDXL, 28 for SD3 and FLUX.1).
        guidance_scale (`float` or `None`, *optional*, defaults to `None`):
            Classifier-free guidance scale when generating; 1.0 turns guidance off. For FLUX.1-dev it is the
            distilled guidance fed to the guidance embedding, in generation and in training. `None` uses the
            pipeline's default (7.5 for SD 1.x / 2.x, 5.0 for SDXL, 7.0 for SD3, 3.5 for FLUX.1).
        negative_prompt (`str` or `None`, *optional*, defaults to `None`):
            Negative prompt used for every candidate (with guidance); not for FLUX.1.
        max_sequence_length (`int` or `None`, *optional*, defaults to `None`):
            T5 tokens of each prompt for SD3 and FLUX.1, in generation and training; `None` uses the pipeline's
            default (256 for SD3, 512 for FLUX.1).
        iterations_per_stage (`int`, *optional*, defaults to `100`):
            Optimizer steps per stage on the kept images.
        lora_rank (`int`, *optional*, defaults to `4`):
            Rank of the LoRA on the denoiser's attention projections.
        lora_alpha (`int` or `None`, *optional*, defaults to `None`):
            LoRA scaling numerator; `None` uses `lora_rank` (scale 1).
        lora_target_modules (`list[str]` or `None`, *optional*, defaults to `None`):
            The denoiser's modules that get the LoRA; `None` uses the family's: the UNet's `to_q`, `to_k`, `to_v`,
            `to_out.0`, or, for SD3 and FLUX.1, the transformer's image and text attention projections (`attn.to_*`,
            `attn.add_*_proj`, `attn.to_add_out`), as diffusers' LoRA scripts do.
        snr_gamma (`float` or `None`, *optional*, defaults to `None`):
            Min-SNR loss weighting (Hang et al., 2023) with this gamma (5.0 is the usual value); `None` weighs all
            timesteps equally. Denoising loss only (SD 1.x / 2.x, SDXL).
        weighting_scheme (`str`, *optional*, defaults to `"logit_normal"`):
            Flow matching (SD3, FLUX.1): how the training sigma is drawn and the loss weighted, as in diffusers' SD3
            script. `"logit_normal"`: sigma = sigmoid(N(logit_mean, logit_std)); `"mode"`: SD3's mode-seeking density
            with `mode_scale`; `"uniform"`: uniform; `"sigma_sqrt"` and `"cosmap"`: uniform, the loss weighted by
            sigma^-2 or the cosine map.
        logit_mean (`float`, *optional*, defaults to `0.0`):
            Mean of the logit-normal timestep density.
        logit_std (`float`, *optional*, defaults to `1.0`):
            Standard deviation of the logit-normal timestep density.
        mode_scale (`float`, *optional*, defaults to `1.29`):
            Scale of the `"mode"` timestep density.
        precondition_outputs (`bool`, *optional*, defaults to `False`):
            Flow matching: compare the clean-latent estimate x_sigma - sigma * prediction with the latents (the SD3
            script's EDM-style preconditioning, the velocity loss times sigma^2) instead of the prediction with the
            velocity.
        save_candidate_images (`bool`, *optional*, defaults to `False`):
            Save every candidate image of a stage as PNG, not only the kept ones.
        pipeline_init_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Keyword arguments for `DiffusionPipeline.from_pretrained` when the pipeline is given by id (a
            dict, or JSON text on the command line: `'{"torch_dtype": "float16"}'`).
    """

    height: int | None = field(
        default=None,
        metadata={"help": "Height of the generated images (a multiple of 8); None: the pipeline family's default."},
    )
    width: int | None = field(
        default=None,
        metadata={"help": "Width of the generated images (a multiple of 8); None: the pipeline family's default."},
    )
    num_inference_steps: int | None = field(
        default=None,
        metadata={"help": "Denoising steps when generating candidates; None: the pipeline family's default."},
    )
    guidance_scale: float | None = field(
        default=None,
        metadata={"help": "Classifier-free guidance scale when generating (1.0: none); None: the family's default."},
    )
    negative_prompt: str | None = field(
        default=None, metadata={"help": "Negative prompt for every candidate (used with guidance; not FLUX)."}
    )
    max_sequence_length: int | None = field(
        default=None,
        metadata={"help": "T5 prompt tokens for SD3 / FLUX (None: the pipeline's default, 256 / 512)."},
    )
    iterations_per_stage: int = field(default=100, metadata={"help": "Optimizer steps per stage on the kept images."})
    lora_rank: int = field(default=4, metadata={"help": "Rank of the LoRA on the denoiser's attention projections."})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha; None uses lora_rank (scale 1)."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Denoiser modules that get the LoRA (None: the pipeline family's default)."}
    )
    snr_gamma: float | None = field(
        default=None,
        metadata={"help": "Min-SNR loss weighting gamma (e.g. 5.0; SD 1.x/2.x/XL); None weighs timesteps equally."},
    )
    weighting_scheme: str = field(
        default="logit_normal",
        metadata={
            "help": "Flow matching (SD3, FLUX): how training sigmas are drawn / weighted (diffusers' SD3 script).",
            "choices": list(WEIGHTING_SCHEMES),
        },
    )
    logit_mean: float = field(default=0.0, metadata={"help": "Mean of the 'logit_normal' timestep density."})
    logit_std: float = field(default=1.0, metadata={"help": "Std of the 'logit_normal' timestep density."})
    mode_scale: float = field(default=1.29, metadata={"help": "Scale of the 'mode' timestep density."})
    precondition_outputs: bool = field(
        default=False,
        metadata={"help": "Flow matching: regress x_sigma - sigma * prediction on the latents (SD3's EDM option)."},
    )
    save_candidate_images: bool = field(
        default=False, metadata={"help": "Save every candidate image as PNG, not only the kept ones."}
    )
    pipeline_init_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for DiffusionPipeline.from_pretrained (a dict, or JSON text)."},
    )
    num_generations: int = field(
        default=20,
        metadata={"help": "K: candidates per prompt (local ranking) or pool size over b (global). Acceptance 1/K."},
    )
    generation_batch_size: int = field(default=8, metadata={"help": "Images per pipeline call when generating."})
    learning_rate: float = field(default=6e-6, metadata={"help": "Learning rate (the paper's 256x256 run: 6e-6)."})

    def __post_init__(self):
        require(
            self.sample_allocation == "uniform",
            f"sample_allocation={self.sample_allocation!r} needs each candidate's gradient norm, which the diffusion "
            "trainer does not measure: leave sample_allocation='uniform'.",
        )
        for name in ("height", "width"):
            value = getattr(self, name)
            require(
                value is None or (value >= 8 and value % 8 == 0),
                f"{name} must be a positive multiple of 8, or None for the pipeline's default (got {value}).",
            )
        require(
            self.num_inference_steps is None or self.num_inference_steps >= 1,
            f"num_inference_steps must be >= 1, or None for the pipeline's default (got {self.num_inference_steps}).",
        )
        require(
            self.iterations_per_stage >= 1, f"iterations_per_stage must be >= 1 (got {self.iterations_per_stage})."
        )
        require(self.lora_rank >= 1, f"lora_rank must be >= 1 (got {self.lora_rank}).")
        require(
            self.lora_alpha is None or self.lora_alpha > 0, f"lora_alpha must be > 0 or None (got {self.lora_alpha})."
        )
        require(self.snr_gamma is None or self.snr_gamma > 0, f"snr_gamma must be > 0 or None (got {self.snr_gamma}).")
        require(
            self.weighting_scheme in WEIGHTING_SCHEMES,
            f"weighting_scheme must be one of {', '.join(WEIGHTING_SCHEMES)} (got {self.weighting_scheme!r}).",
        )
        require(self.logit_std > 0, f"logit_std must be > 0 (got {self.logit_std}).")
        require(
            self.max_sequence_length is None or self.max_sequence_length >= 1,
            f"max_sequence_length must be >= 1 or None (got {self.max_sequence_length}).",
        )
        require(
            self.lora_target_modules is None or len(self.lora_target_modules) > 0,
            "lora_target_modules is empty: name at least one module, or leave it None for the family's default.",
        )
        require(
            self.guidance_scale is None or self.guidance_scale >= 0,
            f"guidance_scale must be >= 0, or None for the pipeline's default (got {self.guidance_scale}).",
        )
        self.pipeline_init_kwargs = keyword_arguments(self.pipeline_init_kwargs, "pipeline_init_kwargs")
        super().__post_init__()
