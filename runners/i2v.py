"""Image-to-video: the first frame conditions the DIT through VAE latents + mask (y) and, for Wan2.1,
through CLIP image tokens in cross-attention. Wan2.2 A14B I2V uses y only."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from lightx2v_quant.report import StageTimes
from runners import components as comp
from runners.base import WanRunner
from runners.conditioning import i2v_latent_size, image_to_tensor, load_image, synthetic_image, vae_condition


class I2VRunner(WanRunner):
    kind = "i2v"

    def prepare(self) -> None:
        """Load the image and size the video from its aspect ratio within task height x width pixels."""
        if self.cfg.image:
            image, source = load_image(self.cfg.image), str(self.cfg.image)
        else:  # validation allows this only for random weights
            image = synthetic_image(self.video.height, self.video.width, int(self.cfg.seed))
            source = "synthetic (random-weights run without image=)"
            self.notes.append("no image given: a seeded synthetic image conditions this random-weights run")
        lat_h, lat_w = i2v_latent_size((image.height, image.width), self.video.height * self.video.width)
        asked = (self.video.height, self.video.width)
        self.video = replace(self.video, height=lat_h * 8, width=lat_w * 8)
        if (self.video.height, self.video.width) != asked:
            self.notes.append(
                f"i2v: {image.width}x{image.height} image in {asked[0]}x{asked[1]} pixels -> "
                f"{self.video.width}x{self.video.height} video (official aspect rule)"
            )
        self.image = image_to_tensor(image)  # [3, h, w] in [-1, 1]
        self.image_source = source

    def image_inputs(self, plans: dict, times: StageTimes, bar: tqdm) -> tuple[Any, Any]:
        clip_fea = None
        if "clip" in self.plan.components:  # Wan2.1 I2V: CLIP tokens of the first frame
            if self._unquantized(plans, "clip") and "clip" in self._cached:
                clip_fea = self._cached["clip"]
            else:
                with times.stage("load_image_encoder"):
                    clip, info = comp.build_image_encoder(
                        self.cfg, plans.get("clip"), self.device, self.random
                    )
                bar.update(1)
                self.components.setdefault("clip", info)
                with times.stage("encode_image"):
                    clip_fea = clip.encode(self.image.to(self.device))
                del clip
                if self._unquantized(plans, "clip"):
                    self._cached["clip"] = clip_fea
        if "y" not in self._cached:  # the VAE is never quantized: both runs share y
            with times.stage("encode_first_frame"), torch.no_grad():
                y = vae_condition(
                    self.vae, self.image, self.video.frames, self.video.height, self.video.width
                )
            self._cached["y"] = y[None]
        return clip_fea, self._cached["y"]

    def build_report(self, main, memory, quality):
        report = super().build_report(main, memory, quality)
        report["image"] = self.image_source
        return report
