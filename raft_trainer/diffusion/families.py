"""What differs between the pipeline families `DiffusionRAFTTrainer` fine-tunes, one adapter class each.

    family                   pipeline                    LoRA on       loss
    Stable Diffusion 1.x/2.x StableDiffusionPipeline     UNet          denoising (epsilon / v), Min-SNR
    Stable Diffusion XL      StableDiffusionXLPipeline   UNet          denoising, + pooled text and size / crop ids
    Stable Diffusion 3 / 3.5 StableDiffusion3Pipeline    transformer   flow matching (SD3's timestep schemes)
    FLUX.1                   FluxPipeline                transformer   flow matching, packed latents, guidance

An adapter encodes the prompts (and what else conditions the model: SDXL's size and crop ids), calls the denoiser
the way its pipeline does, and saves / reads the LoRA in the format its pipeline's `load_lora_weights` reads. It also
fills the sampling settings the configuration leaves None with the pipeline's own (its `__call__`'s defaults, and the
size it computes from its denoiser's sample size), so each family samples as diffusers does unless told otherwise.
The trainer holds the stage cycle and the loss; nothing here knows about stages.
"""

import copy
import inspect

import torch
from diffusers import (
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import get_peft_model_state_dict

from .denoising import LORA_TARGET_MODULES

# The SD3 and FLUX LoRA scripts of diffusers put the LoRA on every attention projection of the joint blocks, the
# text stream's (`add_*`, `to_add_out`) as well as the image stream's.
TRANSFORMER_LORA_TARGET_MODULES = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
]


# The configuration's sampling fields that None leaves to the pipeline family; the last two are `__call__` keywords.
SAMPLED_CALL_FIELDS = ("num_inference_steps", "guidance_scale")
SAMPLING_FIELDS = ("height", "width", *SAMPLED_CALL_FIELDS)


class PipelineFamily:
    """The adapter of one pipeline family (see the module docstring); subclasses set the class attributes."""

    display_name = "Stable Diffusion"
    pipeline_class = StableDiffusionPipeline
    denoiser_name = "unet"  # the pipeline component that gets the LoRA, and the prefix of its keys in LoRA files
    objective = "denoising"  # or "flow_matching"
    lora_target_modules = LORA_TARGET_MODULES
    hub_tags = ("stable-diffusion",)
    supports_negative_prompt = True
    uses_max_sequence_length = False  # has a T5 encoder whose prompt length the pipeline takes

    def __init__(self, pipeline, args):
        self.pipeline = pipeline
        self.args = self.with_sampling_defaults(args)
        self.check(self.args)

    # What the trainer asks of every family ---------------------------------------------------------------------

    def check(self, args) -> None:
        """Reject settings the family cannot use, naming the field and the fix."""
        if args.snr_gamma is not None and self.objective != "denoising":
            raise ValueError(
                f"snr_gamma={args.snr_gamma} weights the denoising loss of SD 1.x / 2.x / XL; {self.display_name} "
                "trains with flow matching: leave snr_gamma None and choose weighting_scheme instead."
            )
        multiple = self.size_multiple()
        for name in ("height", "width"):
            value = getattr(args, name)
            if value % multiple:
                raise ValueError(
                    f"{name}={value}: {self.display_name} with this VAE and denoiser makes images whose sides are "
                    f"multiples of {multiple}; set {name} to one (e.g. {value // multiple * multiple or multiple})."
                )

    def size_multiple(self) -> int:
        return self.pipeline.vae_scale_factor

    def sampling_defaults(self) -> dict:
        """The pipeline's own sampling settings: the defaults of its `__call__` for the steps and the guidance, and
        the size it falls back to, its denoiser's sample size (`default_sample_size`, else the UNet config's) times
        the VAE factor: 512 for SD 1.5, 768 for SD 2.1, 1024 for SDXL, SD3 and FLUX.1. Nothing is loaded."""
        parameters = inspect.signature(type(self.pipeline).__call__).parameters
        defaults = {}
        for name in SAMPLED_CALL_FIELDS:
            default = parameters[name].default if name in parameters else inspect.Parameter.empty
            if default is inspect.Parameter.empty:
                raise ValueError(
                    f"{name}=None takes the pipeline's default, and {type(self.pipeline).__name__}.__call__ has none: "
                    f"set {name}."
                )
            defaults[name] = default
        sample_size = getattr(self.pipeline, "default_sample_size", None) or self.denoiser.config.sample_size
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        scale = self.pipeline.vae_scale_factor
        return {"height": height * scale, "width": width * scale, **defaults}

    def with_sampling_defaults(self, args):
        """`args`, or a copy of it whose unset sampling fields hold `sampling_defaults()`. A copy, so the caller's
        configuration stays as given and can serve a pipeline of another family."""
        unset = [name for name in SAMPLING_FIELDS if getattr(args, name) is None]
        if not unset:
            return args
        defaults = self.sampling_defaults()
        resolved = copy.copy(args)
        for name in unset:
            setattr(resolved, name, defaults[name])
        return resolved

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.denoiser_name)

    def text_encoders(self) -> list[torch.nn.Module]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [getattr(self.pipeline, name) for name in names if getattr(self.pipeline, name, None) is not None]

    def training_scheduler(self):
        """A scheduler for training draws, apart from the pipeline's (which inference resets): the full DDPM noise
        schedule of the pipeline's betas."""
        return DDPMScheduler.from_config(self.pipeline.scheduler.config)

    def generation_kwargs(self, num_images: int) -> dict:
        """The pipeline's keywords for a batch of `num_images` candidates, besides the prompts and the generator."""
        args = self.args
        kwargs = dict(
            height=args.height,
            width=args.width,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
        )
        if self.supports_negative_prompt:
            kwargs["negative_prompt"] = [args.negative_prompt] * num_images if args.negative_prompt else None
        if self.uses_max_sequence_length and args.max_sequence_length is not None:
            kwargs["max_sequence_length"] = args.max_sequence_length
        return kwargs

    def conditioning(self, prompts: list[str], images: list, device: torch.device) -> dict[str, torch.Tensor]:
        """The denoiser's conditioning for each kept image, batched: at least `prompt_embeds`."""
        prompt_embeds, _ = self.pipeline.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
        return {"prompt_embeds": prompt_embeds}

    def latents(self, sample: torch.Tensor) -> torch.Tensor:
        """A VAE latent sample in the denoiser's space: shifted (SD3, FLUX) and scaled as its pipeline decodes it."""
        config = self.pipeline.vae.config
        return (sample - (getattr(config, "shift_factor", None) or 0.0)) * config.scaling_factor

    def predict(self, model, noisy_latents: torch.Tensor, timesteps: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The denoiser's output for a training batch (`model` is the trained, possibly wrapped, denoiser)."""
        return model(noisy_latents, timesteps, inputs["prompt_embeds"], return_dict=False)[0]

    # The LoRA file ---------------------------------------------------------------------------------------------

    def lora_layers(self, denoiser) -> dict[str, torch.Tensor]:
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))

    def save_lora(self, directory: str, denoiser, weight_name: str) -> None:
        """Write the denoiser's LoRA (and its LoraConfig, so a rank other than alpha loads right) with the family's
        own `save_lora_weights`, in the layout its `load_lora_weights` reads."""
        self.pipeline_class.save_lora_weights(
            directory,
            weight_name=weight_name,
            safe_serialization=True,
            **{
                f"{self.denoiser_name}_lora_layers": self.lora_layers(denoiser),
                f"{self.denoiser_name}_lora_adapter_metadata": denoiser.peft_config["default"].to_dict(),
            },
        )

    def read_lora(self, directory: str, weight_name: str) -> dict[str, torch.Tensor]:
        """The denoiser's LoRA weights in a folder `save_lora` wrote, as the PEFT state dict of the adapter."""
        loaded = self.pipeline_class.lora_state_dict(directory, weight_name=weight_name)
        state_dict = loaded[0] if isinstance(loaded, tuple) else loaded  # some families also return alphas
        prefix = f"{self.denoiser_name}."
        return convert_unet_state_dict_to_peft(
            {key.removeprefix(prefix): value for key, value in state_dict.items() if key.startswith(prefix)}
        )

    # The model card --------------------------------------------------------------------------------------------

    @property
    def card_training(self) -> str:
        loss = "the denoising loss" if self.objective == "denoising" else "the flow-matching (velocity) loss"
        denoiser = "UNet" if self.denoiser_name == "unet" else "transformer"
        return f"a {self.display_name} {denoiser} LoRA on them with {loss}"

    @property
    def card_usage(self) -> str:
        name = self.pipeline_class.__name__
        return (
            f'```python\nfrom diffusers import {name}\n\npipeline = {name}.from_pretrained("{{base_model}}")\n'
            'pipeline.load_lora_weights("<this repository or folder>")\n```'
        )


class StableDiffusionXLFamily(PipelineFamily):
    """SDXL: both CLIP encoders' states, the second's pooled output, and the six `add_time_ids` (original size, crop
    top-left, target size) of each image."""

    display_name = "Stable Diffusion XL"
    pipeline_class = StableDiffusionXLPipeline
    hub_tags = ("stable-diffusion-xl",)

    def conditioning(self, prompts, images, device):
        prompt_embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        # The candidates are the pipeline's own samples, drawn whole at their size: original = target = the image's
        # size, crop (0, 0), which is what the pipeline conditioned them on.
        time_ids = torch.tensor([[image.height, image.width, 0, 0, image.height, image.width] for image in images])
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled, "time_ids": time_ids.to(prompt_embeds)}

    def predict(self, model, noisy_latents, timesteps, inputs):
        added = {"text_embeds": inputs["pooled_prompt_embeds"], "time_ids": inputs["time_ids"]}
        return model(noisy_latents, timesteps, inputs["prompt_embeds"], added_cond_kwargs=added, return_dict=False)[0]


class StableDiffusion3Family(PipelineFamily):
    """SD3 / SD3.5: the MMDiT transformer on the joint CLIP + T5 states and the pooled CLIP outputs, flow matching."""

    display_name = "Stable Diffusion 3"
    pipeline_class = StableDiffusion3Pipeline
    denoiser_name = "transformer"
    objective = "flow_matching"
    lora_target_modules = TRANSFORMER_LORA_TARGET_MODULES
    hub_tags = ("sd3", "sd3-diffusers")
    uses_max_sequence_length = True

    def size_multiple(self) -> int:
        return self.pipeline.vae_scale_factor * self.pipeline.transformer.config.patch_size

    def training_scheduler(self):
        # A fresh copy keeps the 1000-step training schedule (with the pipeline's shift) that inference overwrites.
        return FlowMatchEulerDiscreteScheduler.from_config(self.pipeline.scheduler.config)

    def sequence_kwargs(self) -> dict:
        length = self.args.max_sequence_length
        return {} if length is None else {"max_sequence_length": length}

    def conditioning(self, prompts, images, device):
        prompt_embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompts, None, None, device=device, do_classifier_free_guidance=False, **self.sequence_kwargs()
        )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}

    def predict(self, model, noisy_latents, timesteps, inputs):
        return model(
            hidden_states=noisy_latents,
            timestep=timesteps,
            encoder_hidden_states=inputs["prompt_embeds"],
            pooled_projections=inputs["pooled_prompt_embeds"],
            return_dict=False,
        )[0]

    def lora_layers(self, denoiser):
        return get_peft_model_state_dict(denoiser)  # already in the transformer's diffusers key layout


class FluxFamily(StableDiffusion3Family):
    """FLUX.1: latents packed into 2x2 patches with their position ids, timesteps in [0, 1], and the distilled
    guidance embedding (dev) fed `guidance_scale` in training as in generation; no negative prompt."""

    display_name = "FLUX.1"
    pipeline_class = FluxPipeline
    hub_tags = ("flux", "flux-diffusers")
    supports_negative_prompt = False

    def check(self, args) -> None:
        if args.negative_prompt:
            raise ValueError(
                f"negative_prompt={args.negative_prompt!r}: FLUX.1 is guidance-distilled and takes no negative prompt "
                "in DiffusionRAFTTrainer; leave negative_prompt None (guidance_scale sets the distilled guidance)."
            )
        super().check(args)

    def size_multiple(self) -> int:
        return self.pipeline.vae_scale_factor * 2  # the latents are packed 2x2

    def conditioning(self, prompts, images, device):
        prompt_embeds, pooled, _ = self.pipeline.encode_prompt(prompts, None, device=device, **self.sequence_kwargs())
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}

    def predict(self, model, noisy_latents, timesteps, inputs):
        batch, channels, height, width = noisy_latents.shape
        device, dtype = noisy_latents.device, noisy_latents.dtype
        packed = FluxPipeline._pack_latents(noisy_latents, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, dtype)
        text_ids = torch.zeros(inputs["prompt_embeds"].shape[1], 3, device=device, dtype=dtype)
        guidance = None
        if self.pipeline.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), self.args.guidance_scale, device=device, dtype=torch.float32)
        output = model(
            hidden_states=packed,
            timestep=timesteps / 1000,  # FLUX's transformer takes sigma-like times; the pipeline divides too
            guidance=guidance,
            pooled_projections=inputs["pooled_prompt_embeds"],
            encoder_hidden_states=inputs["prompt_embeds"],
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        scale = self.pipeline.vae_scale_factor
        return FluxPipeline._unpack_latents(output, height * scale, width * scale, scale)


FAMILIES = (PipelineFamily, StableDiffusionXLFamily, StableDiffusion3Family, FluxFamily)


def pipeline_family(pipeline, args) -> PipelineFamily:
    """The adapter of `pipeline`'s family, checked against `args`."""
    for family in FAMILIES:
        if isinstance(pipeline, family.pipeline_class):
            return family(pipeline, args)
    supported = ", ".join(family.pipeline_class.__name__ for family in FAMILIES)
    raise ValueError(
        f"pipeline is a {type(pipeline).__name__}; DiffusionRAFTTrainer fine-tunes {supported}: pass one of these "
        "(or the id / folder of one)."
    )
