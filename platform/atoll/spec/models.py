"""The job spec: pydantic models of ``apiVersion: atoll/v1`` YAML files.

Field names are snake_case in Python and camelCase in YAML (Kubernetes style).
Every model forbids unknown keys and is frozen. Validation is pure: no files
are written, no network is touched. Cross-field rules live in the
``model_validator``s below and raise ``ValueError`` with a message that says
what to change.
"""
from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator
from pydantic.alias_generators import to_camel

API_VERSION = "atoll/v1"
KINDS = ("Job",)

#: sizes of the bundled sources, for cross-field checks that need no I/O
KNOWN_SOURCE_SIZES = {("fashion-mnist", "train"): 60000, ("fashion-mnist", "test"): 10000,
                      ("fashion-mnist", "all"): 70000, ("digits", "all"): 1797}
KNOWN_SOURCE_CLASSES = {"fashion-mnist": 10, "digits": 10}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?$")


class FieldError(ValueError):
    """A cross-field rule broken; ``field`` is the camelCase path (relative to
    the model whose validator raised) of the key to change, so the error names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel,
                              populate_by_name=True, validate_default=True)


class OmitsLaterDefaults(Base):
    """A model whose fields in ``LATER`` (added after runs were made with it) are left out of dumps
    while they hold their defaults: the hashes of earlier runs' specs (data stage, training
    fingerprints) stay valid, and parsing a dump fills the defaults back in."""

    LATER: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler, info):
        out = handler(self)
        for name in self.LATER:
            if getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True):
                out.pop(to_camel(name) if info.by_alias else name, None)
        return out


# -- metadata -----------------------------------------------------------------
class Metadata(Base):
    name: str = Field(description="Run name: lowercase letters, digits and '-' (a DNS label, "
                                  "so it can name Kubernetes objects); the run lives at <store>/<name>.")
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not DNS_LABEL.match(v):
            raise ValueError("must be 1-50 lowercase letters, digits or '-', starting and ending "
                             "with a letter or digit (e.g. 'fmnist-k4')")
        return v


# -- store --------------------------------------------------------------------
class S3Options(Base):
    endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://127.0.0.1:8333; "
                                                       "default: AWS_ENDPOINT_URL or AWS itself.")
    region: str | None = None
    access_key_id: str | None = Field(None, description="Default: AWS_ACCESS_KEY_ID.")
    secret_access_key: str | None = Field(None, description="Default: AWS_SECRET_ACCESS_KEY.")


class StoreSpec(Base):
    uri: str | None = Field(None, description="file:///path, a plain path, or s3://bucket/prefix. "
                                              "Default: $ATOLL_STORE or ./runs.")
    s3: S3Options = Field(default_factory=S3Options)

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "://" in v and not v.startswith(("file://", "s3://")):
            raise ValueError("use file:///path, a plain path or s3://bucket/prefix")
        if v.startswith("s3://") and not v[5:].split("/")[0]:
            raise ValueError("an S3 URI needs a bucket: s3://BUCKET/PREFIX")
        return v


# -- data -----------------------------------------------------------------------
class FashionMnistSource(Base):
    type: Literal["fashion-mnist"]
    path: str = Field("/usr/share/datasets/fashion-mnist",
                      description="Folder with the idx .gz files (Debian package dataset-fashion-mnist).")
    split: Literal["train", "test", "all"] = "all"


class DigitsSource(Base):
    type: Literal["digits"]


class ImageFolderSource(OmitsLaterDefaults):
    LATER: ClassVar[tuple[str, ...]] = ("channels",)
    type: Literal["image-folder"]
    path: str = Field(description="Folder of images: class sub-folders (labels) or NAME.txt caption files beside images.")
    labels: Literal["folders", "captions"] = "folders"
    channels: Literal["auto", 1, 3] = Field("auto", description=(
        "Channels of the stored images: 1 (grey), 3 (RGB), or auto: 1 when every file is grey, else 3."))


class WebDatasetSource(Base):
    type: Literal["webdataset"]
    urls: list[str] = Field(min_length=1, description="Shard paths/URIs (file or s3://), brace patterns allowed.")


class MovingClipsSource(Base):
    """Moving-MNIST-style clips built from real images bouncing in a frame."""
    type: Literal["moving-clips"]
    images: Literal["fashion-mnist", "digits"] = "fashion-mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    num_clips: int = Field(2000, ge=1, le=1_000_000)
    frames: int = Field(8, ge=2, le=256)
    size: int = Field(32, ge=16, le=512)
    objects: int = Field(1, ge=1, le=8)
    seed: int = 0


Source = Annotated[Union[FashionMnistSource, DigitsSource, ImageFolderSource, WebDatasetSource, MovingClipsSource],
                   Field(discriminator="type")]


class LoaderSpec(Base):
    """How training reads its shards (experts and router)."""
    mode: Literal["stream", "memory"] = Field("stream", description=(
        "stream: ranged reads of the shards, one shuffle window (+ prefetch) in memory; memory: decode "
        "every sample once up front (small data). Both give the same samples for the same seed."))
    shuffle_window: int = Field(4096, ge=1, le=10_000_000, description=(
        "Samples shuffled together (a window of whole chunks); memory ~ (1 + prefetch) x window x sample size."))
    chunk_size: int = Field(64, ge=1, le=100_000, description="Consecutive samples per ranged read.")
    prefetch: int = Field(1, ge=0, le=16, description="Windows assembled ahead on a background thread.")
    read_threads: int = Field(4, ge=1, le=64, description="Ranged reads in flight at once.")


class DataSpec(OmitsLaterDefaults):
    LATER: ClassVar[tuple[str, ...]] = ("on_corrupt", "loader")
    source: Source
    limit: int | None = Field(None, ge=1, description="Use only the first N samples.")
    image_size: int | None = Field(None, ge=8, le=1024, description="Resize images to this square size.")
    shard_size: int = Field(10000, ge=16, le=1_000_000, description="Samples per WebDataset shard.")
    on_corrupt: Literal["error", "skip"] = Field("error", description=(
        "A corrupt shard or sample met while partitioning or training: error (a clear error naming the "
        "shard) or skip (leave it out, counted in the stage's manifest and the island's metrics)."))
    loader: LoaderSpec = Field(default_factory=LoaderSpec)

    #: fields that change how data is read, not what the data stage writes
    READING: ClassVar[set[str]] = {"on_corrupt", "loader"}

    def training_view(self) -> dict:
        """What of this section decides the trained weights: the data, and the sample order
        (``loader.shuffleWindow`` / ``chunkSize``, when not the defaults); not how it is read."""
        out = self.model_dump(mode="json", exclude=self.READING)
        order = {k: getattr(self.loader, k) for k in ("shuffle_window", "chunk_size")
                 if getattr(self.loader, k) != LoaderSpec.model_fields[k].default}
        return {**out, "loader_order": order} if order else out

    def num_samples(self) -> int | None:
        """The sample count when it is known without reading data."""
        s = self.source
        if isinstance(s, MovingClipsSource):
            n = s.num_clips
        else:
            n = KNOWN_SOURCE_SIZES.get((s.type, getattr(s, "split", "all")))
        if n is not None and self.limit is not None:
            return min(n, self.limit)
        return n if n is not None else self.limit


# -- partition -------------------------------------------------------------------
class PcaFeatures(Base):
    type: Literal["pca"]
    dims: int = Field(64, ge=2, le=4096)


class MiniLMFeatures(Base):
    type: Literal["minilm"]


class TorchScriptFeatures(Base):
    type: Literal["torchscript"]
    path: str = Field(description="A TorchScript file mapping [B,C,H,W] float images in [-1,1] to [B,D] features.")
    batch_size: int = Field(256, ge=1)


class PretrainedFeatures(Base):
    type: Literal["dinov2", "clip"]
    path: str = Field(description="A Dinov2Model / CLIPVisionModel folder saved with save_pretrained, or its "
                                  "store URI (file:// or s3://); features are its mean-pooled patch tokens.")
    batch_size: int = Field(64, ge=1)
    device: str = Field("auto", description="auto (the first GPU when there is one), cpu, cuda or cuda:N.")


Features = Annotated[Union[PcaFeatures, MiniLMFeatures, TorchScriptFeatures, PretrainedFeatures],
                     Field(discriminator="type")]


class PartitionSpec(Base):
    method: Literal["kmeans", "random"] = "kmeans"
    k: int = Field(4, ge=1, le=1024, description="Number of coarse clusters = number of experts.")
    fine_clusters: int = Field(1024, ge=1, le=65536, description="Fine k-means centroids, merged into k.")
    features: Features = Field(default_factory=lambda: PcaFeatures(type="pca"))
    seed: int = 0

    @model_validator(mode="after")
    def _fine_vs_k(self):
        if self.method == "kmeans" and self.fine_clusters < self.k:
            raise FieldError("fineClusters", f"fineClusters ({self.fine_clusters}) must be >= k ({self.k}); "
                             f"raise fineClusters or lower k")
        return self


# -- latents ----------------------------------------------------------------------
class LatentsSpec(Base):
    enabled: bool = Field(False, description="Train the experts and the router on VAE latents (the encode stage).")
    vae: str = Field("", description="An AutoencoderKL folder saved with save_pretrained (e.g. SD-VAE), or its "
                                     "store URI (file:// or s3://); never downloaded from a hub.")
    batch_size: int = Field(32, ge=1, description="Images per VAE forward pass in the encode stage.")
    device: str = Field("auto", description="auto (the first GPU when there is one), cpu, cuda or cuda:N.")
    posterior: Literal["mean", "sample"] = Field("mean", description=(
        "mean: the experts train on each image's latent mean; sample: the latents also keep the VAE's "
        "log-variance and every training step draws z ~ N(mean, exp(logvar)), as LDM / DiT train."))

    @model_validator(mode="after")
    def _vae(self):
        if self.enabled and not self.vae:
            raise FieldError("vae", "latents.enabled needs latents.vae: the folder of an AutoencoderKL "
                                    "(save_pretrained) or its s3:// URI")
        return self


# -- training ---------------------------------------------------------------------
def check_attention_layout(attention: str, ring_degree: int | None, sp: int) -> None:
    """``attention`` / ``ringDegree`` against the sequence-parallel degree ``sp`` (a ``FieldError`` naming
    the field and the fix); shared by ``experts.scaling`` and ``serve``."""
    if attention != "ulysses" and sp == 1:
        raise FieldError("attention", f"attention: {attention} splits a clip over several ranks; set "
                         "sequenceParallel > 1 or remove attention")
    if attention == "hybrid":
        r = ring_degree
        ok = [d for d in range(2, sp) if sp % d == 0]
        if r is None or not (1 < r < sp and sp % r == 0):
            raise FieldError("ringDegree", f"attention: hybrid needs ringDegree with 1 < ringDegree < "
                             f"sequenceParallel ({sp}) dividing it (sequenceParallel = ulysses x ringDegree); got "
                             f"{r}; use one of {ok}" if ok else f"attention: hybrid needs a sequenceParallel with "
                             f"a divisor between 1 and itself, {sp} has none: use attention: ulysses or ring")
    elif ring_degree is not None:
        raise FieldError("ringDegree", f"ringDegree is for attention: hybrid (attention: {attention} "
                         f"uses {'all ranks' if attention == 'ring' else 'no ring'}); remove it")


def ulysses_degree(attention: str, ring_degree: int | None, sp: int) -> int:
    """Ranks that split heads (all-to-all) within a clip's group of ``sp`` ranks."""
    if attention == "ring":
        return 1
    return sp // (ring_degree or 1)


class ScalingSpec(Base):
    """Ray Train scaling of one island (one expert's training run)."""
    num_workers: int = Field(1, ge=1, le=4096)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    sequence_parallel: int = Field(1, ge=1, le=4096, description=(
        "Video experts: ranks that share one clip's tokens (sequence parallelism); numWorkers = data-parallel "
        "replicas x sequenceParallel. 1 = plain data parallelism."))
    attention: Literal["ulysses", "ring", "hybrid"] = Field("ulysses", description=(
        "How attention is split over a clip's ranks: ulysses (DeepSpeed-Ulysses all-to-all over heads; "
        "sequenceParallel must divide the heads), ring (ring attention, any head count) or hybrid "
        "(USP: Ulysses x ring, sequenceParallel = ulysses x ringDegree; the Ulysses part must divide the heads)."))
    ring_degree: int | None = Field(None, ge=2, description="attention: hybrid only: ranks in each attention ring.")

    @model_validator(mode="after")
    def _gpu(self):
        if self.gpus_per_worker > 0 and not self.use_gpu:
            raise FieldError("gpusPerWorker", "gpusPerWorker > 0 needs useGpu: true")
        return self

    @model_validator(mode="after")
    def _sequence_parallel(self):
        sp, w = self.sequence_parallel, self.num_workers
        if w % sp:
            ok = [d for d in range(1, w + 1) if w % d == 0]
            raise FieldError("sequenceParallel", f"sequenceParallel ({sp}) must divide numWorkers ({w}): numWorkers = "
                             f"data-parallel replicas x sequenceParallel; use sequenceParallel in {ok} or numWorkers: "
                             f"{sp * max(1, w // sp)}")
        check_attention_layout(self.attention, self.ring_degree, sp)
        return self

    @property
    def data_parallel(self) -> int:
        """Replicas that see different clips: numWorkers / sequenceParallel."""
        return self.num_workers // self.sequence_parallel

    @property
    def ulysses_degree(self) -> int:
        """Ranks that split heads (all-to-all) within a clip's group."""
        return ulysses_degree(self.attention, self.ring_degree, self.sequence_parallel)


class TrainingSpec(Base):
    steps: int = Field(1000, ge=1, le=100_000_000)
    batch_size: int = Field(64, ge=1, description="Global batch per optimizer step (all workers, all accumulation).")
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_accum: int = Field(1, ge=1, le=1024)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    zero_stage: int = Field(2, ge=0, le=3)
    timesteps: Literal["logit-normal", "uniform"] = "logit-normal"
    class_dropout: float = Field(0.1, ge=0, lt=1, description="Label drop rate for classifier-free guidance.")
    checkpoint_every: int = Field(200, ge=1)
    snapshot_every: int = Field(0, ge=0, description=(
        "Also keep the EMA weights every N steps as a loadable model (snapshots/step-N; 0 = off), "
        "e.g. to score a model along its training; `atoll sample RUN --step N` loads one."))
    log_every: int = Field(20, ge=1)
    seed: int = 0


def check_batch_split(t: TrainingSpec, scaling: ScalingSpec) -> None:
    """The global batch must split evenly over data-parallel replicas and accumulation steps."""
    w = scaling.data_parallel
    who = ("scaling.numWorkers" if scaling.sequence_parallel == 1 else
           f"the data-parallel replicas (numWorkers {scaling.num_workers} / sequenceParallel {scaling.sequence_parallel})")
    if t.batch_size % (w * t.grad_accum):
        raise FieldError("training.batchSize", f"training.batchSize ({t.batch_size}) must be divisible by "
                         f"{who} x training.gradAccum ({w} x {t.grad_accum}); e.g. batchSize: "
                         f"{max(1, t.batch_size // (w * t.grad_accum)) * w * t.grad_accum}")


class ExpertsSpec(OmitsLaterDefaults):
    LATER: ClassVar[tuple[str, ...]] = ("distill_from",)
    recipe: str | None = Field(None, description="An experts/*.yaml recipe (name or path); its keys are defaults for this section.")
    model: str = Field("DiT-XS/2", description="A named DiT size, e.g. DiT-XS/2, DiT-S/2, DiT-B/2.")
    conditioning: Literal["class", "text", "none"] = "class"
    text_mode: Literal["pooled", "cross"] = Field(
        "pooled", description="text conditioning: pooled MiniLM states added to the adaLN vector, or cross-attention.")
    mode: Literal["ensemble", "monolith"] = Field(
        "ensemble", description="monolith: one model on all data with k times the batch, for FLOP-matched comparison.")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    distill_from: str | None = Field(None, description=(
        "Set by `atoll distill`: the teacher run's name in the same store. This one model (mode: monolith) "
        "is trained to match that ensemble's velocity instead of the data's flow target."))

    @model_validator(mode="after")
    def _batch(self):
        check_batch_split(self.training, self.scaling)
        if self.distill_from is not None and self.mode != "monolith":
            raise FieldError("distillFrom", "experts.distillFrom trains one student model: it needs experts.mode: "
                             "monolith (use `atoll distill JOB.yaml`, which writes the student's spec)")
        return self


class DistillSpec(Base):
    """``atoll distill``: one dense student DiT trained to match the ensemble's velocity (the ensemble
    as teacher, on noised training data), on its own island. Unset fields take the experts' values."""
    name: str | None = Field(None, description="The student run's name (default: <metadata.name>-distilled).")
    model: str | None = Field(None, description="The student's DiT size (default: experts.model).")
    strategy: str = Field("top1", description=(
        "The teacher's routing: top1 (the ensemble as it is served cheapest), topN or full."))
    training: TrainingSpec | None = Field(None, description="The student's training (default: experts.training "
                                          "with the batch the ensemble's experts saw together, experts x batchSize).")
    scaling: ScalingSpec | None = Field(None, description="The student's island (default: experts.scaling).")

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str | None) -> str | None:
        if v is not None and not DNS_LABEL.match(v):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-'")
        return v

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if v != "full" and not (v.startswith("top") and v[3:].isdigit() and int(v[3:]) >= 1):
            raise ValueError("use top1, top2 ... topN or full")
        return v


class RouterInit(Base):
    """Where a router's training starts (set by ``atoll add-experts``): a committed router checkpoint in the
    run and the expert ids of its outputs; outputs for other experts start as a fresh router's head."""
    checkpoint: str = Field(description="A router checkpoint prefix in the run, e.g. router/model.")
    experts: list[int] = Field(description="The expert ids of that router's outputs, in order.")


class RouterSpec(OmitsLaterDefaults):
    LATER: ClassVar[tuple[str, ...]] = ("experts", "init")
    model: str = Field("Router-XS@16", description=(
        "A named router size (atoll.models.router.ROUTER_SIZES); '@16' sizes see x_t area-averaged to 16x16, "
        "so their cost per step stays small next to any expert (docs/routing.md)."))
    conditioning: Literal["auto", "class", "none"] = Field("auto", description=(
        "What the router sees besides x_t and t. class: r(x_t, t, y), routing a class to the experts that "
        "saw it (needs class-conditional experts); none: the DDM paper's r(x_t, t); auto: class when the "
        "experts are class-conditional, else none."))
    training: TrainingSpec = Field(default_factory=lambda: TrainingSpec(steps=500, batch_size=128, lr=1e-3,
                                                                      class_dropout=0.1, ema_decay=0.0))
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    experts: list[int] | None = Field(None, description=(
        "Set by `atoll add-experts`: the expert ids (partition/expert-N folders) the router chooses between, "
        "in output order (default: 0..partition.k-1)."))
    init: RouterInit | None = Field(None, description="Set by `atoll add-experts`: start from this router.")

    @model_validator(mode="after")
    def _batch(self):
        check_batch_split(self.training, self.scaling)
        if self.experts is not None and (not self.experts or sorted(set(self.experts)) != self.experts):
            raise FieldError("experts", "router.experts must list distinct expert ids in ascending order")
        return self

    def sees_class(self, experts: "ExpertsSpec") -> bool:
        """Whether the router is class-conditional, r(x_t, t, y), next to these experts."""
        return self.conditioning == "class" or (self.conditioning == "auto" and experts.conditioning == "class")


# -- islands ------------------------------------------------------------------------
class IslandSpec(Base):
    name: str
    experts: list[int] | None = Field(None, description="Expert ids this island trains; default: spread evenly.")
    address: str | None = Field(None, description="ray target: the island's Jobs API, e.g. http://127.0.0.1:8265.")
    context: str | None = Field(None, description="kubernetes target: the kube context.")
    namespace: str = "default"
    num_gpus: int = Field(0, ge=0)

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not DNS_LABEL.match(v):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-'")
        return v


class IslandsSpec(Base):
    target: Literal["local", "ray", "kubernetes"] = "local"
    max_concurrent: int | None = Field(None, ge=1, description="local: islands trained at once; default: as resources allow.")
    max_retries: int = Field(2, ge=0, le=100, description="Retries of a failed island, each from its last checkpoint.")
    lost_after_seconds: float = Field(30.0, gt=0, le=86400, description=(
        "ray target: an island whose Jobs API has not answered for this long is lost, and its units move to "
        "another island (resuming from their last checkpoint; the lost island's attempt is fenced off)."))
    islands: list[IslandSpec] = Field(default_factory=list)
    router_island: str | None = None

    @model_validator(mode="after")
    def _islands(self):
        names = [i.name for i in self.islands]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise FieldError("islands", f"island names must be unique; repeated: {', '.join(dup)}")
        if self.target == "ray":
            missing = [i.name for i in self.islands if not i.address]
            if not self.islands or missing:
                where = f"islands.{names.index(missing[0])}.address" if missing else "islands"
                raise FieldError(where, "target 'ray' needs islands with an address each (e.g. address: "
                                 f"http://127.0.0.1:8265); missing for: {', '.join(missing) or 'no islands listed'}")
        if self.router_island is not None and self.router_island not in names:
            raise FieldError("routerIsland", f"routerIsland {self.router_island!r} is not one of the islands: {', '.join(names) or 'none'}")
        return self


# -- sampling & serving ----------------------------------------------------------------
Strategy = Literal["full", "top1", "top2", "top3", "topk"]


class SampleSpec(Base):
    strategies: list[str] = Field(default_factory=lambda: ["top1", "full"],
                                  description="Any of full, top1, top2 ... topN.")
    num_per_class: int = Field(8, ge=1, le=1024)
    steps: int = Field(32, ge=1, le=1000)
    sampler: Literal["euler", "heun"] = "euler"
    guidance: float = Field(1.5, ge=0, le=50)
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="Where the samples stage runs the ensemble: auto (the first GPU if the "
                                    "machine has one, else the CPU), cpu, cuda or cuda:N.")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not re.fullmatch(r"full|top[1-9][0-9]*", s)]
        if bad:
            raise ValueError(f"unknown strateg{'y' if len(bad) == 1 else 'ies'} {', '.join(map(repr, bad))}; "
                             "use full, top1, top2, ... topN")
        return v


class DeploymentSpec(OmitsLaterDefaults):
    """One Serve deployment's replicas, resources and batch size.

    ``maxBatchSize``: rows per scheduler tick for the ``ensemble`` replica (and the ``router``
    replica of distributed mode, which runs the scheduler); ``batchWaitTimeoutS`` is kept for old
    specs: continuous batching never waits for a batch to fill.
    """

    num_replicas: int | Literal["auto"] = 1
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=10)
    scale_on: Literal["requests", "rows"] = Field("requests", description=(
        "numReplicas auto: what Serve's autoscaler reads. requests: ongoing requests per replica (Serve's "
        "default); rows (serve.experts of distributed mode): the rows per second the router sends the expert, "
        "targetRowsPerS per replica; with minReplicas 0 an expert nobody is routed to scales to zero."))
    target_rows_per_s: float = Field(32.0, gt=0, description="scaleOn rows: rows per second one replica takes.")
    idle_s: float = Field(60.0, ge=0, le=86400, description=(
        "scaleOn rows: seconds of less load before replicas are removed (to zero with minReplicas 0)."))
    upscale_delay_s: float = Field(5.0, ge=0, le=3600, description="scaleOn rows: seconds of more load before "
                                   "replicas are added (a cold start from zero never waits).")
    LATER: ClassVar[tuple[str, ...]] = ("scale_on", "target_rows_per_s", "idle_s", "upscale_delay_s")

    @model_validator(mode="after")
    def _replicas(self):
        if self.scale_on == "rows" and self.num_replicas != "auto":
            raise FieldError("scaleOn", f"scaleOn: rows autoscales the deployment, but numReplicas is "
                             f"{self.num_replicas}: set numReplicas: auto (with minReplicas / maxReplicas)")
        if isinstance(self.num_replicas, int) and self.num_replicas < 1:
            raise FieldError("numReplicas", f"numReplicas is {self.num_replicas}; a deployment needs 1 or more "
                             "replicas: set numReplicas >= 1, or auto to autoscale between minReplicas and maxReplicas")
        if self.min_replicas > self.max_replicas:
            raise FieldError("minReplicas", f"minReplicas ({self.min_replicas}) is larger than maxReplicas "
                             f"({self.max_replicas}); lower minReplicas or raise maxReplicas")
        return self


class AuthSpec(Base):
    """The optional API key of the served app (``Authorization: Bearer <key>``; never in the spec itself)."""

    api_key_env: str = Field("ATOLL_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description=(
        "Environment variable holding the API key where the app is built; when it is set, every route but "
        "/healthz and the docs needs the key (401 without it)."))
    api_key_secret: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", description=(
        "Kubernetes: the Secret (in the serving namespace) the Helm chart reads the key from into apiKeyEnv; "
        "setting it makes the key required."))
    api_key_secret_key: str = Field("api-key", pattern=r"^[-._a-zA-Z0-9]+$", description="Key inside that Secret.")
    required: bool = Field(False, description="Refuse to start without a key (also implied by apiKeySecret).")


#: rows per scheduler tick when a spec's serve.ensemble / serve.router leaves maxBatchSize out
SCHEDULER_ROWS = 64


class ServeSpec(Base):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = "/"
    max_samples: int = Field(16, ge=1, le=1024, description="Largest n a request may ask for.")
    max_steps: int = Field(100, ge=1, le=1000)
    default_steps: int = Field(32, ge=1, le=1000)
    mode: Literal["ensemble", "distributed"] = Field("ensemble", description=(
        "ensemble: one deployment holds the router and all experts and batches every tick in-process; "
        "distributed: the router deployment runs the scheduler and calls one deployment per expert once per tick "
        "(for experts that do not fit one device)."))
    ensemble: DeploymentSpec = Field(default_factory=lambda: DeploymentSpec(max_batch_size=SCHEDULER_ROWS),
                                     description="mode ensemble: the replicas holding router + experts; "
                                                 "maxBatchSize = rows per tick (default 64).")
    router: DeploymentSpec = Field(default_factory=lambda: DeploymentSpec(max_batch_size=SCHEDULER_ROWS),
                                   description="mode distributed: the scheduler + router replicas; "
                                               "maxBatchSize = rows per tick (default 64).")
    experts: DeploymentSpec = Field(default_factory=DeploymentSpec, description=(
        "mode distributed: each expert's deployment."))
    on_expert_failure: Literal["reroute", "fail"] = Field("reroute", description=(
        "mode distributed, when an expert has no replica left: reroute its rows to the healthy experts "
        "(renormalised routing, header X-Atoll-Degraded) or fail the requests that need it (503, Retry-After)."))
    auth: AuthSpec = Field(default_factory=AuthSpec)
    sequence_parallel: int = Field(1, ge=1, le=64, description=(
        "Video runs: ranks per expert replica (one gloo/NCCL group of Ray actors sharing each clip's tokens); "
        "with attention: ulysses it must divide the video DiT's attention heads."))
    attention: Literal["ulysses", "ring", "hybrid"] = Field("ulysses", description=(
        "Video runs with sequenceParallel > 1: how a clip's attention is split over the replica's ranks, as "
        "in experts.scaling: ulysses (DeepSpeed-Ulysses all-to-all over heads), ring (ring attention, any head "
        "count) or hybrid (Ulysses x ring, ringDegree ranks per ring)."))
    ring_degree: int | None = Field(None, ge=2, description="attention: hybrid only: ranks in each attention ring.")
    registry_poll_s: float = Field(30.0, ge=0, description=(
        "mode ensemble: how often each replica reads experts/registry.json; a new version (atoll add-experts / "
        "remove-expert) is loaded beside the old one and serves the next requests, those in flight finish on the "
        "old one (no redeploy). 0: never. Distributed mode and sequence-parallel video need a redeploy."))

    @model_validator(mode="after")
    def _attention_layout(self):
        check_attention_layout(self.attention, self.ring_degree, self.sequence_parallel)
        return self

    @property
    def ulysses_degree(self) -> int:
        return ulysses_degree(self.attention, self.ring_degree, self.sequence_parallel)

    @model_validator(mode="after")
    def _rows_are_an_experts_signal(self):
        for name in ("ensemble", "router"):
            if getattr(self, name).scale_on == "rows":
                raise FieldError(f"{name}.scaleOn", f"serve.{name}.scaleOn: rows: only the expert deployments of "
                                 "serve.mode: distributed are sent rows by the router; use scaleOn: requests here, "
                                 "or serve.experts.scaleOn: rows with serve.mode: distributed")
        if self.experts.scale_on == "rows" and self.mode != "distributed":
            raise FieldError("experts.scaleOn", "serve.experts.scaleOn: rows scales the expert deployments of "
                             "serve.mode: distributed; set serve.mode: distributed")
        return self

    @model_validator(mode="after")
    def _sections_of_the_mode(self):
        if self.mode != "ensemble":
            return self
        placement = ("num_replicas", "min_replicas", "max_replicas", "num_cpus", "num_gpus")
        for name in ("router", "experts"):
            d, default = getattr(self, name), DeploymentSpec()
            changed = [DeploymentSpec.model_fields[f].alias for f in placement if getattr(d, f) != getattr(default, f)]
            if changed:
                raise FieldError(name, f"serve.{name} ({', '.join(changed)}) configures serve.mode: distributed, but this "
                                 "spec serves in mode ensemble, where one deployment holds the router and every expert: "
                                 f"move the settings to serve.ensemble, or set serve.mode: distributed")
        return self

    @model_validator(mode="before")
    @classmethod
    def _scheduler_rows(cls, data):
        """``ensemble`` / ``router`` sections without ``maxBatchSize`` get the scheduler's default rows per tick."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key in ("ensemble", "router"):
            d = out.get(key)
            if isinstance(d, dict) and "maxBatchSize" not in d and "max_batch_size" not in d:
                out[key] = {**d, "maxBatchSize": SCHEDULER_ROWS}
        return out


# -- the job ------------------------------------------------------------------------
class JobSpecBody(OmitsLaterDefaults):
    LATER: ClassVar[tuple[str, ...]] = ("distill",)
    store: StoreSpec = Field(default_factory=StoreSpec)
    data: DataSpec
    partition: PartitionSpec = Field(default_factory=PartitionSpec)
    latents: LatentsSpec = Field(default_factory=LatentsSpec)
    experts: ExpertsSpec = Field(default_factory=ExpertsSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)
    islands: IslandsSpec = Field(default_factory=IslandsSpec)
    sample: SampleSpec = Field(default_factory=SampleSpec)
    serve: ServeSpec = Field(default_factory=ServeSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)

    @model_validator(mode="after")
    def _cross(self):
        k, n = self.partition.k, self.data.num_samples()
        if n is not None and k > n:
            raise FieldError("partition.k", f"partition.k ({k}) is larger than the number of samples ({n}); lower partition.k")
        if n is not None and self.partition.method == "kmeans" and self.partition.fine_clusters > n:
            raise FieldError("partition.fineClusters", f"partition.fineClusters ({self.partition.fine_clusters}) is larger than the number "
                             f"of samples ({n}); lower partition.fineClusters")
        if self.experts.conditioning == "text" and self.data.source.type in ("fashion-mnist", "digits"):
            pass  # captions are made from class names for these sources
        if self.partition.features.type == "minilm" and self.data.source.type == "moving-clips":
            raise FieldError("partition.features.type", "partition.features.type 'minilm' needs captions; moving-clips have none: use 'pca'")
        self._check_video()
        if self.latents.enabled and self.is_video:
            raise FieldError("latents.enabled", "latent space is for image experts; video experts train on "
                             "pixels: set latents.enabled: false")
        self._check_strategies()
        if self.router.conditioning == "class" and self.experts.conditioning != "class":
            raise FieldError("router.conditioning", f"router.conditioning 'class' needs class-conditional experts, "
                             f"but experts.conditioning is {self.experts.conditioning!r}; use router.conditioning: "
                             "none (or auto)")
        for i, isl in enumerate(self.islands.islands):
            bad = [e for e in (isl.experts or []) if not 0 <= e < self.num_experts]
            if bad:
                raise FieldError(f"islands.islands.{i}.experts", f"island {isl.name!r} lists experts {bad}, but there are "
                                 f"{self.num_experts} (ids 0..{self.num_experts - 1})")
        return self

    def _check_strategies(self) -> None:
        """``topN`` needs N <= K experts (a monolith's one model serves every strategy), as at sampling time."""
        n = self.num_experts
        if n == 1:
            return
        over = [s for s in self.sample.strategies if s.startswith("top") and int(s[3:]) > n]
        if over:
            raise FieldError("sample.strategies", f"sample.strategies {', '.join(over)} need{'s' if len(over) == 1 else ''}"
                             f" more experts than the job has (partition.k = {n}); use top1..top{n} or full, "
                             "or raise partition.k")

    @property
    def is_video(self) -> bool:
        """True for video experts (a ``VDiT-*`` model on moving-clips data)."""
        return self.experts.model.startswith("VDiT-")

    def _check_video(self) -> None:
        clips = self.data.source.type == "moving-clips"
        if self.is_video and not clips:
            raise FieldError("experts.model", f"experts.model {self.experts.model} is a video DiT but "
                             f"data.source.type is {self.data.source.type!r}; use data.source.type: moving-clips, "
                             "or an image size such as DiT-XS/2")
        if clips and not self.is_video:
            raise FieldError("experts.model", f"data.source.type moving-clips needs a video DiT, got "
                             f"experts.model {self.experts.model}; use e.g. VDiT-XXS/4")
        if self.is_video and self.experts.conditioning == "text":
            raise FieldError("experts.conditioning", "video experts support conditioning: class or none, not text")
        sc = self.experts.scaling
        if self.router.scaling.sequence_parallel > 1:
            raise FieldError("router.scaling.sequenceParallel", "the router trains on whole samples (no sequence "
                             "parallelism): remove router.scaling.sequenceParallel or set 1")
        if sc.sequence_parallel > 1 and not self.is_video:
            raise FieldError("experts.scaling.sequenceParallel", f"experts.scaling.sequenceParallel "
                             f"({sc.sequence_parallel}) is for video experts (VDiT-*); image experts train data-"
                             "parallel: remove it or set 1")
        if sc.sequence_parallel > 1:
            heads = _video_heads(self.experts.model)
            u = sc.ulysses_degree
            if heads and heads % u:
                ok = [n for n in range(1, heads + 1) if heads % n == 0]
                what = ("sequenceParallel" if sc.attention == "ulysses" else
                        f"sequenceParallel / ringDegree ({sc.sequence_parallel} / {sc.ring_degree})")
                raise FieldError("experts.scaling.sequenceParallel", f"experts.scaling.{what} gives a Ulysses degree "
                                 f"of {u}, which must divide the {heads} attention heads of {self.experts.model} "
                                 f"(Ulysses splits heads over ranks); use a Ulysses degree in {ok}, or attention: ring "
                                 "(any head count)")
        if self.serve.sequence_parallel > 1 and not self.is_video:
            raise FieldError("serve.sequenceParallel", f"serve.sequenceParallel ({self.serve.sequence_parallel}) "
                             "is for video experts (VDiT-*); image experts run on one rank: remove it or set 1")
        if self.serve.sequence_parallel > 1:
            try:
                from atoll.models.video_dit import VDIT_SIZES
            except ImportError:  # validation without torch installed
                return
            heads = VDIT_SIZES.get(self.experts.model, {}).get("num_heads")  # unknown sizes: the loader says
            u = self.serve.ulysses_degree
            if heads and heads % u:
                ok = [n for n in range(1, heads + 1) if heads % n == 0]
                what = ("serve.sequenceParallel" if self.serve.attention == "ulysses" else
                        f"serve.sequenceParallel / serve.ringDegree ({self.serve.sequence_parallel} / "
                        f"{self.serve.ring_degree})")
                raise FieldError("serve.sequenceParallel", f"{what} gives a Ulysses degree of {u}, which must "
                                 f"divide the {heads} attention heads of {self.experts.model} (Ulysses splits heads "
                                 f"over ranks); use a Ulysses degree in {ok}, or serve.attention: ring")

    @property
    def num_experts(self) -> int:
        return 1 if self.experts.mode == "monolith" else self.partition.k


def _video_heads(model: str) -> int | None:
    """The attention heads of a VDiT size (None without torch, or for an unknown size: the loader says)."""
    try:
        from atoll.models.video_dit import VDIT_SIZES
    except ImportError:  # validation without torch installed
        return None
    return VDIT_SIZES.get(model, {}).get("num_heads")


class JobSpec(Base):
    api_version: Literal["atoll/v1"] = Field(alias="apiVersion")
    kind: Literal["Job"]
    metadata: Metadata
    spec: JobSpecBody

    @property
    def name(self) -> str:
        return self.metadata.name
