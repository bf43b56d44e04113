"""Distributed fine-tuning of a TAID pair on a domain's images with Ray Train.

Submit it to any Ray cluster:

    ray job submit --working-dir . -- python -m pipeline.jobs.finetune \\
        --data s3://bucket/domain/ --base taid-x2 --name taid-x2-docs --out s3://models/ --workers 2

Each worker streams its shard of the domain images from object storage, samples patches and
runs the very same `models.training.train_step` as `taid train` on a DDP-wrapped pair (gloo on
CPU, nccl on GPU). Checkpoints go to `<out>/runs/<name>/` through Ray Train's storage; a worker
failure restarts the group from the latest checkpoint. Afterwards the base and the new pair are
evaluated on the domain's held-out split (and on `--eval-data`), and the new pair is registered
in the model registry at `<out>` only if it beats the base there (or with `--force-register`).
S3 settings come from the usual environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL for S3-compatible stores, AWS_DEFAULT_REGION); they are never logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import fsspec
import numpy as np
import torch
from pydantic import BaseModel, Field

from models.data import PatchSampler, list_images, read_rgb, split_holdout
from models.evaluate import evaluate
from models.training import TrainConfig, make_channel, make_optimizer, train_step
from models.zoo import export_weights, load_pair


class FinetuneConfig(BaseModel):
    data: str = Field(description="domain images: folder or URI (s3://bucket/domain/)")
    base: str = Field("taid-x2", description="model id (zoo or registry) to start from")
    name: str = Field(description="id of the new model, e.g. taid-x2-docs")
    out: str = Field(description="model registry URI; checkpoints go to <out>/runs/<name>/")
    workers: int = 2
    use_gpu: bool | None = Field(None, description="None: use GPUs when the cluster has them")
    cpus_per_worker: float = 1.0
    steps: int = 1000
    batch: int = 16
    patch: int = 96
    lr: float = 1e-4
    warmup_steps: int = 20
    guidance_weight: float | None = Field(
        None, description="None: 1.0 for a codec-aware base (lower let the thumbnail drift through its lossy channel), "
                          "else 0.03"
    )
    holdout_every: int = Field(5, description="every n-th domain image is held out for the before/after comparison")
    ckpt_every: int = 100
    max_failures: int = Field(2, description="worker-group restarts from the latest checkpoint")
    eval_data: str | None = Field(None, description="a general eval set to report before/after on too")
    force_register: bool = False
    seed: int = 0
    fail_at_step: int | None = Field(None, description="testing: fail once at this step to exercise resume")

    def train_config(self, arch: dict, channel: dict | None = None) -> TrainConfig:
        """`channel` is the base pair's channel block (models.zoo): a codec-aware base is fine-tuned
        with the same lossy channel and quality band in the loop, so the tuned pair stays codec-aware."""
        loop = {}
        if channel:
            loop = {"channel": channel["small_format"], "channel_quality": tuple(channel["quality_band"]),
                    "channel_gradient": channel["gradient"]}
        guidance = self.guidance_weight if self.guidance_weight is not None else (1.0 if channel else 0.03)
        return TrainConfig(
            **arch, guidance_weight=guidance, data=[self.data], patch=self.patch, batch=self.batch,
            steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps, seed=self.seed, **loop,
        )

    @property
    def storage_path(self) -> str:
        return self.out.rstrip("/") + "/runs"


def pyarrow_storage(uri: str):
    """(path, pyarrow filesystem) for Ray Train's RunConfig; S3 endpoint/keys from the environment
    (pyarrow ignores AWS_ENDPOINT_URL, so pass it explicitly)."""
    if not uri.startswith("s3://"):
        return str(Path(uri).resolve()), None
    from pyarrow import fs as pafs

    from pipeline.settings import get_settings

    env = get_settings()
    kwargs = {"allow_bucket_creation": True, "region": env.aws_region or "us-east-1"}
    if env.aws_endpoint_url:
        endpoint = env.aws_endpoint_url
        kwargs["endpoint_override"] = endpoint.split("://", 1)[-1]
        kwargs["scheme"] = endpoint.split("://", 1)[0] if "://" in endpoint else "https"
    if env.aws_access_key_id:
        kwargs["access_key"] = env.aws_access_key_id
        kwargs["secret_key"] = env.aws_secret_access_key.get_secret_value() if env.aws_secret_access_key else ""
    return uri[len("s3://") :], pafs.S3FileSystem(**kwargs)


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = FinetuneConfig(**config["finetune"])
    tcfg = TrainConfig(**config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))

    uris = config["train_uris"][rank::world] or config["train_uris"]
    sampler = PatchSampler([read_rgb(u) for u in uris], tcfg.patch, tcfg.batch, tcfg.seed + rank)
    pair = load_pair(cfg.base, registry=cfg.out)
    step, resumed_from = 0, None
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        pair.load_state_dict(state["state_dict"])
        step = resumed_from = state["step"]
        sampler.load_state(state["sampler"][rank % len(state["sampler"])])
    model = ray.train.torch.prepare_model(pair)  # DDP (gloo on CPU, nccl on GPU), moved to the device
    optimizer = make_optimizer(model, tcfg)
    channel = make_channel(tcfg)  # a codec-aware base keeps its lossy channel in the loop (seeded per rank)
    if channel is not None:
        channel.rng = np.random.default_rng(tcfg.seed + rank + 1000 * step)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    while step < tcfg.steps:
        losses = train_step(model, optimizer, sampler.sample().to(device), tcfg, step, channel)
        step += 1
        if cfg.fail_at_step == step and checkpoint is None and rank == 0:
            raise RuntimeError(f"injected failure at step {step} (fail_at_step)")
        if step % cfg.ckpt_every == 0 or step == tcfg.steps:
            metrics = {**losses, "step": step, "resumed_from": -1 if resumed_from is None else resumed_from}
            # every worker's sampler state, so a resumed run continues each shard's random stream
            samplers = [sampler.state()] * world
            if world > 1:
                torch.distributed.all_gather_object(samplers, sampler.state())
            if rank == 0:
                with tempfile.TemporaryDirectory() as d:
                    unwrapped = model.module if hasattr(model, "module") else model
                    torch.save(
                        {
                            "config": tcfg.model_dump(),
                            "step": step,
                            "state_dict": {k: v.cpu() for k, v in unwrapped.state_dict().items()},
                            "optimizer": optimizer.state_dict(),
                            "sampler": samplers,
                        },
                        Path(d) / "state.pt",
                    )
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            else:
                ray.train.report(metrics)


def run_finetune(cfg: FinetuneConfig, log=None) -> dict:
    """Fine-tune on the running Ray cluster (ray.init() is called if needed), evaluate, register."""
    log = log or logging.getLogger(__name__).info
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from models.registry import register

    if not ray.is_initialized():
        ray.init()
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= cfg.workers
    uris = list_images([cfg.data])
    train_uris, held_uris = split_holdout(uris, cfg.holdout_every)
    if not train_uris or not held_uris:
        raise ValueError(f"{cfg.data}: need images for training and a held-out split, found {len(uris)}")
    base = load_pair(cfg.base, registry=cfg.out)
    tcfg = cfg.train_config(base.arch, base.channel)
    storage_path, storage_fs = pyarrow_storage(cfg.storage_path)
    log(f"fine-tuning {cfg.base} -> {cfg.name}: {len(train_uris)} training / {len(held_uris)} held-out images, "
        f"{cfg.workers} workers, gpu={use_gpu}")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"finetune": cfg.model_dump(), "train": tcfg.model_dump(), "train_uris": train_uris},
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"fine-tuning {cfg.name} produced no checkpoint: {result.error}")

    with tempfile.TemporaryDirectory() as tmp, result.checkpoint.as_directory() as d:
        weights, sha = export_weights(Path(d) / "state.pt", cfg.name, tmp)
        tuned = load_pair(str(weights))
        report = {"model_id": cfg.name, "sha256": sha, "base_model": cfg.base, "data_uri": cfg.data,
                  "steps": tcfg.steps, "workers": cfg.workers, "checkpoint": result.checkpoint.path,
                  "resumed_from": (result.metrics or {}).get("resumed_from", -1)}
        held = {"base": evaluate(base, held_uris)["mean"], "tuned": evaluate(tuned, held_uris)["mean"]}
        report["heldout"] = held
        report["gain_db"] = held["tuned"]["psnr_y"] - held["base"]["psnr_y"]
        if cfg.eval_data:
            report["general"] = {"data": cfg.eval_data, "base": evaluate(base, cfg.eval_data)["mean"],
                                 "tuned": evaluate(tuned, cfg.eval_data)["mean"]}
        report["registered"] = report["gain_db"] > 0 or cfg.force_register
        if report["registered"]:
            metrics = {"heldout": held, **({"general": report["general"]} if "general" in report else {})}
            report["entry"] = register(weights, cfg.name, cfg.out, base=cfg.base, data_uri=cfg.data, metrics=metrics,
                                       extra={"steps": tcfg.steps, "forced": report["gain_db"] <= 0})
    fs, _ = fsspec.core.url_to_fs(cfg.out)
    fs.pipe_file(f"{cfg.storage_path}/{cfg.name}/result.json", json.dumps(report, indent=2).encode())
    log(f"held-out Y-PSNR {held['base']['psnr_y']:.2f} -> {held['tuned']['psnr_y']:.2f} dB "
        f"({report['gain_db']:+.2f}); registered: {report['registered']}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.jobs.finetune", description=__doc__.splitlines()[0])
    for name, field in FinetuneConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_true", help=field.description)
        else:
            parser.add_argument(flag, dest=name, required=field.is_required(), help=field.description)
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run_finetune(FinetuneConfig(**args))
    print(json.dumps(report, indent=2))  # the result, on stdout
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
