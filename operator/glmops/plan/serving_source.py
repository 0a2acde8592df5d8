"""Which files a ModelDeployment serves: its source and adapters resolved against FineTuneJobs. Pure.

The handler passes the FineTuneJobs it read (raw JSON, or None when absent); this module decides
whether to wait (a job that has not Succeeded yet), to refuse (what can never work, naming the
field and the fix), or what to serve: a GGUF file, a merged checkpoint, or a base checkpoint
with LoRA adapters. Checks that a job's spec can answer (formats, quantizations, base model) are
made at once, so a deployment is not refused only hours later when its job finishes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from glmops.api.defaults import resolve_training
from glmops.api.finetunejob import Artifacts, FineTuneJob, OutputFormat, Phase
from glmops.api.modeldeployment import ArtifactKind, ModelDeploymentSpec, Runtime
from glmops.conditions import Reason
from glmops.plan.problems import Problem
from glmops.plan.serving_download import parse_hub_uri
from glmops.plan.uris import parse_uri

LOCAL_SCHEMES = ("pvc", "file")
"""What a pod mounts; hf:// models are downloaded into a claim first (glmops.plan.serving_download)."""
SERVABLE_SCHEMES = (*LOCAL_SCHEMES, "hf")
BASE_NAME_SUFFIX = "-base"
"""The base model's name when spec.source is an adapter (the adapter takes servedModelName)."""
_QUANT_IN_NAME = re.compile(r"(Q3_K_M|Q4_0|Q4_K_M|Q5_K_M|Q6_K|Q8_0)", re.IGNORECASE)


@dataclass(frozen=True)
class JobView:
    """What serving needs to know of one FineTuneJob."""

    name: str
    phase: str
    variant: str
    base_source: str
    formats: tuple[str, ...]
    quantizations: tuple[str, ...]
    artifacts: Artifacts
    lora_rank: int
    lora_targets: tuple[str, ...]
    message: str = ""
    """The Succeeded condition's message (why it failed, or what it waits for)."""
    percent: int | None = None


def view_job(body: Mapping[str, Any]) -> JobView | str:
    """The serving view of a FineTuneJob as read from the API, or why it cannot be read."""
    try:
        job = FineTuneJob.model_validate(dict(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        return f"its spec is invalid ({'.'.join(str(p) for p in first['loc'])}: {first['msg']})"
    training = resolve_training(job.spec)
    succeeded = next((c for c in job.status.conditions if c.type == "Succeeded"), None)
    return JobView(
        name=str(job.metadata.get("name", "")),
        phase=job.status.phase.value if job.status.phase else "",
        variant=job.spec.model.variant.value,
        base_source=job.spec.model.source,
        formats=tuple(f.value for f in job.spec.output.formats),
        quantizations=tuple(q.value for q in job.spec.output.quantizations) if OutputFormat.gguf in job.spec.output.formats else (),
        artifacts=job.status.artifacts or Artifacts(),
        lora_rank=training.lora_rank,
        lora_targets=tuple(t.value for t in training.lora_targets),
        message=(succeeded.message or "") if succeeded else "",
        percent=job.status.progress.percent if job.status.progress else None,
    )


@dataclass(frozen=True)
class ServedAdapter:
    """A LoRA adapter the vLLM replicas serve under its own name."""

    name: str
    uri: str
    job: str
    rank: int
    """Its LoRA rank (also per expert on the routed experts: the trainer's adapters have no rank_pattern)."""
    targets: tuple[str, ...]

    @property
    def fused_experts(self) -> bool:
        """Whether it adapts the routed experts, stored as peft's fused 3-D tensors (vLLM: is_3d_lora_weight)."""
        return "experts" in self.targets


@dataclass(frozen=True)
class ResolvedModel:
    """What the replicas load."""

    kind: ArtifactKind
    variant: str
    uri: str
    """GGUF file, merged checkpoint folder, or (with adapters) the base checkpoint."""
    sha256: str | None = None
    size_bytes: int | None = None
    quantization: str | None = None
    model_name: str = ""
    """Name of the model at `uri` in requests."""
    adapters: tuple[ServedAdapter, ...] = ()
    origin: str | None = None
    """Where `uri` was downloaded from (hf://), when it is a cache."""
    mtp_layers: int | None = None
    """MTP layers a merged checkpoint kept, as its export recorded them; None when unknown."""
    job: str | None = None
    """The FineTuneJob the artifact comes from."""

    @property
    def served_names(self) -> list[str]:
        """Every model name the endpoint answers to."""
        return [self.model_name, *(a.name for a in self.adapters)]


@dataclass(frozen=True)
class Resolution:
    """Serve `model`, or wait for `waits`, or refuse for `problems`."""

    model: ResolvedModel | None = None
    waits: tuple[Problem, ...] = ()
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Facts worth telling the user in the Resolved condition."""


def default_artifact(runtime: Runtime) -> ArtifactKind:
    """gguf for llama.cpp, merged weights for vLLM."""
    return ArtifactKind.gguf if runtime is Runtime.llamacpp else ArtifactKind.merged


def resolve_source(
    spec: ModelDeploymentSpec, namespace: str, jobs: Mapping[str, Mapping[str, Any] | None]
) -> Resolution:
    """Resolve spec.source and spec.adapters with the FineTuneJobs they name (None: not found)."""
    problems: list[Problem] = []
    waits: list[Problem] = []
    notes: list[str] = []
    source = spec.source
    kind = source.artifact or default_artifact(spec.runtime)
    if source.uri is not None and source.artifact is None:
        kind = ArtifactKind.gguf if source.uri.lower().endswith(".gguf") else ArtifactKind.merged

    remote_uri = source.uri is not None and parse_uri(source.uri).scheme not in SERVABLE_SCHEMES
    if not remote_uri:  # an unservable uri is refused as such; what it holds is unknown
        _check_runtime_fits_artifact(spec, kind, problems)
    wants_adapters = bool(spec.adapters) or kind is ArtifactKind.adapter
    if spec.adapters and spec.runtime is not Runtime.vllm:
        problems.append(
            Problem(
                Reason.field_not_for_runtime,
                "spec.adapters",
                "LoRA adapters are served by vLLM only; set runtime: vllm, or serve each job's gguf in its own ModelDeployment",
            )
        )
    if source.quantization is not None and kind is not ArtifactKind.gguf:
        problems.append(
            Problem(
                Reason.field_not_for_runtime,
                "spec.source.quantization",
                f"a quantization only chooses among GGUF files, and artifact is {kind.value}; remove the field or set artifact: gguf",
            )
        )

    main: ResolvedModel | None = None
    base_identity = ""  # the base model adapters must have been trained on
    base_variant = source.variant.value if source.variant else ""
    if source.credentials_secret is not None and not (source.uri or "").startswith("hf://"):
        problems.append(
            Problem(
                Reason.invalid_spec,
                "spec.source.credentialsSecret",
                "a token is only used to download an hf:// uri; remove the field (a FineTuneJob's or a PVC's model "
                "needs none)",
            )
        )
    if source.fine_tune_job is not None:
        if source.variant is not None:
            problems.append(
                Problem(
                    Reason.invalid_spec,
                    "spec.source.variant",
                    f"the variant comes from FineTuneJob {source.fine_tune_job!r}; remove the field (it is for uri sources)",
                )
            )
        view = _job(source.fine_tune_job, "spec.source.fineTuneJob", namespace, jobs, waits, problems)
        if view is not None:
            main = _from_job(spec, kind, view, "spec.source", waits, problems)
            base_identity, base_variant = view.base_source.rstrip("/"), view.variant
    else:
        assert source.uri is not None
        main = _from_uri(spec, kind, problems)
        base_identity = source.uri.rstrip("/")

    if (
        spec.adapters
        and spec.runtime is Runtime.vllm
        and kind in (ArtifactKind.gguf, ArtifactKind.merged)
        and source.fine_tune_job is not None
    ):
        problems.append(
            Problem(
                Reason.adapter_needs_base,
                "spec.source",
                f"adapters apply to the base model they were trained on, not to {source.fine_tune_job!r}'s {kind.value} "
                "weights; set spec.source.uri to the base checkpoint, or serve that job's adapter with artifact: adapter",
            )
        )

    adapters: list[ServedAdapter] = []
    if main is not None and main.kind is ArtifactKind.adapter:
        adapters.extend(main.adapters)
    if wants_adapters and spec.runtime is Runtime.vllm:
        for index, entry in enumerate(spec.adapters):
            where = f"spec.adapters[{index}].fineTuneJob"
            view = _job(entry.fine_tune_job, where, namespace, jobs, waits, problems)
            if view is None:
                continue
            if OutputFormat.adapter.value not in view.formats:
                problems.append(_not_produced(where, view, "adapter"))
                continue
            if base_variant and view.variant != base_variant:
                problems.append(_base_mismatch(where, view, f"a {base_variant} base"))
                continue
            if base_identity and not _same_base(view.base_source, base_identity):
                problems.append(_base_mismatch(where, view, base_identity))
                continue
            if base_identity and view.base_source != base_identity:
                notes.append(
                    f"adapter {entry.served_model_name}: FineTuneJob {view.name} trained on {view.base_source}, which "
                    f"cannot be compared with {base_identity}; make sure both hold the same checkpoint"
                )
            if view.phase != Phase.succeeded.value:
                continue  # waiting (recorded by _job)
            if view.artifacts.adapter is None:
                problems.append(_not_produced(where, view, "adapter", recorded=True))
                continue
            adapters.append(
                ServedAdapter(
                    name=entry.served_model_name,
                    uri=view.artifacts.adapter.uri.rstrip("/"),
                    job=view.name,
                    rank=view.lora_rank,
                    targets=view.lora_targets,
                )
            )
        _check_names(spec, main, problems)
        if any(a.uri.split("://", 1)[0] not in LOCAL_SCHEMES for a in adapters):
            remote = next(a for a in adapters if a.uri.split("://", 1)[0] not in LOCAL_SCHEMES)
            problems.append(
                Problem(
                    Reason.uri_not_servable,
                    "spec.adapters",
                    f"the adapter of FineTuneJob {remote.job!r} is at {remote.uri}; serving pods mount models from "
                    "PersistentVolumeClaims (pvc://) or node paths (file://): give that job a pvc:// destination",
                )
            )
        if any("experts" in a.targets for a in adapters):
            notes.append(
                "adapters on routed experts use vLLM's fused-MoE LoRA (GPU, vLLM >= 0.11.2) with tensor "
                "parallelism; expert parallelism cannot be combined with it"
            )

    if waits or problems or main is None:
        return Resolution(None, tuple(waits), tuple(problems), tuple(notes))
    if adapters:
        main = replace(main, adapters=tuple(adapters))
    return Resolution(main, (), (), tuple(notes))


def _check_runtime_fits_artifact(spec: ModelDeploymentSpec, kind: ArtifactKind, problems: list[Problem]) -> None:
    field_path = "spec.source.artifact" if spec.source.fine_tune_job is not None or spec.source.artifact else "spec.source.uri"
    if spec.runtime is Runtime.vllm and kind is ArtifactKind.gguf:
        problems.append(
            Problem(
                Reason.artifact_runtime_mismatch,
                field_path,
                "vLLM does not serve GLM-4.7 GGUF files; set artifact: merged (or adapter) for vllm, or runtime: llamacpp for a GGUF",
            )
        )
    if spec.runtime is Runtime.llamacpp and kind is not ArtifactKind.gguf and spec.source.uri and not spec.source.artifact:
        problems.append(
            Problem(
                Reason.artifact_runtime_mismatch,
                field_path,
                f"{spec.source.uri} is not a .gguf file, and llama.cpp loads one GGUF file: name it (in a Hub repository "
                "of GGUFs: hf://ORG/NAME/FILE.gguf), or set runtime: vllm for a checkpoint folder",
            )
        )
    elif spec.runtime is Runtime.llamacpp and kind is not ArtifactKind.gguf:
        problems.append(
            Problem(
                Reason.artifact_runtime_mismatch,
                field_path,
                f"llama.cpp serves GGUF files, not {kind.value} weights; set artifact: gguf (the job must export gguf), "
                "or runtime: vllm",
            )
        )


def _job(
    name: str,
    where: str,
    namespace: str,
    jobs: Mapping[str, Mapping[str, Any] | None],
    waits: list[Problem],
    problems: list[Problem],
) -> JobView | None:
    """The view of a referenced job; records why to wait for it or why it can never be served."""
    body = jobs.get(name)
    if body is None:
        waits.append(
            Problem(
                Reason.fine_tune_job_not_found,
                where,
                f"FineTuneJob {name!r} does not exist in namespace {namespace} (yet); the deployment starts when it "
                "exists and has Succeeded",
            )
        )
        return None
    view = view_job(body)
    if isinstance(view, str):
        problems.append(Problem(Reason.fine_tune_job_failed, where, f"FineTuneJob {name!r} cannot be served: {view}"))
        return None
    if view.phase in (Phase.failed.value, Phase.cancelled.value):
        detail = f": {view.message}" if view.message else ""
        problems.append(
            Problem(
                Reason.fine_tune_job_failed,
                where,
                f"FineTuneJob {name!r} ended {view.phase}{detail}; it will produce nothing to serve. Train again with a "
                "new FineTuneJob and point this field at it",
            )
        )
        return view
    if view.phase != Phase.succeeded.value:
        progress = f", {view.percent}% trained" if view.percent is not None and view.phase == Phase.training.value else ""
        waits.append(
            Problem(
                Reason.fine_tune_job_not_succeeded,
                where,
                f"FineTuneJob {name!r} is {view.phase or 'not started'}{progress}; the deployment starts when it has Succeeded",
            )
        )
    return view


def _from_job(
    spec: ModelDeploymentSpec,
    kind: ArtifactKind,
    view: JobView,
    where: str,
    waits: list[Problem],
    problems: list[Problem],
) -> ResolvedModel | None:
    """The artifact `kind` of a job: checked against its spec now, taken from its status once it Succeeded."""
    fmt = OutputFormat.gguf if kind is ArtifactKind.gguf else OutputFormat(kind.value)
    if fmt.value not in view.formats:
        problems.append(_not_produced(f"{where}.artifact", view, kind.value))
        return None
    wanted = spec.source.quantization.value if spec.source.quantization else None
    if kind is ArtifactKind.gguf and wanted and wanted not in view.quantizations:
        problems.append(
            Problem(
                Reason.quantization_not_produced,
                f"{where}.quantization",
                f"FineTuneJob {view.name!r} exports {', '.join(view.quantizations) or 'no'} GGUF quantizations, not "
                f"{wanted}; choose one of those, or train a job whose spec.output.quantizations includes {wanted}",
            )
        )
        return None
    if view.phase != Phase.succeeded.value:
        return None
    artifacts = view.artifacts
    if kind is ArtifactKind.gguf:
        ggufs = {g.quantization.value: g for g in artifacts.gguf}
        choice = wanted or next(iter(ggufs), None)
        gguf = ggufs.get(choice) if choice else None
        if gguf is None:
            if wanted:
                problems.append(
                    Problem(
                        Reason.quantization_not_produced,
                        f"{where}.quantization",
                        f"FineTuneJob {view.name!r} succeeded but recorded no {wanted} GGUF (it has: "
                        f"{', '.join(ggufs) or 'none'}); choose a recorded one",
                    )
                )
            else:
                problems.append(_not_produced(f"{where}.artifact", view, "gguf", recorded=True))
            return None
        return ResolvedModel(
            kind, view.variant, gguf.uri, gguf.sha256, gguf.size_bytes, gguf.quantization.value, spec.served_model_name
        )
    if kind is ArtifactKind.merged:
        if artifacts.merged is None:
            problems.append(_not_produced(f"{where}.artifact", view, "merged", recorded=True))
            return None
        merged = artifacts.merged
        return ResolvedModel(
            kind, view.variant, merged.uri.rstrip("/"), merged.sha256, merged.size_bytes, None, spec.served_model_name,
            mtp_layers=merged.mtp_layers, job=view.name,
        )  # fmt: skip
    # adapter: the job's base model, with its adapter under servedModelName
    if artifacts.adapter is None:
        problems.append(_not_produced(f"{where}.artifact", view, "adapter", recorded=True))
        return None
    base = view.base_source.rstrip("/")
    if base.split("://", 1)[0] not in SERVABLE_SCHEMES:
        problems.append(
            Problem(
                Reason.uri_not_servable,
                f"{where}.fineTuneJob",
                f"FineTuneJob {view.name!r} trained on {base}, which serving cannot fetch; copy the base checkpoint into "
                "a PersistentVolumeClaim and serve it with spec.source.uri: pvc://CLAIM/PATH and "
                f"spec.adapters: [{{fineTuneJob: {view.name}, servedModelName: {spec.served_model_name}}}]",
            )
        )
        return None
    adapter = ServedAdapter(
        name=spec.served_model_name,
        uri=artifacts.adapter.uri.rstrip("/"),
        job=view.name,
        rank=view.lora_rank,
        targets=view.lora_targets,
    )
    return ResolvedModel(
        kind,
        view.variant,
        base,
        artifacts.adapter.sha256,
        None,
        None,
        spec.served_model_name + BASE_NAME_SUFFIX,
        (adapter,),
    )


def _from_uri(spec: ModelDeploymentSpec, kind: ArtifactKind, problems: list[Problem]) -> ResolvedModel | None:
    source = spec.source
    assert source.uri is not None
    uri = source.uri.rstrip("/")
    scheme = parse_uri(uri).scheme
    ok = True
    if scheme not in SERVABLE_SCHEMES:
        problems.append(
            Problem(
                Reason.uri_not_servable,
                "spec.source.uri",
                f"{scheme}:// models would be downloaded by every serving pod; copy the model into a "
                "PersistentVolumeClaim once and use pvc://CLAIM/PATH (hf:// models glmops downloads into one itself)",
            )
        )
        return None
    if scheme == "hf":
        hub = parse_hub_uri(uri)
        if isinstance(hub, str):
            problems.append(Problem(Reason.uri_not_servable, "spec.source.uri", hub))
            return None
    if source.variant is None:
        problems.append(
            Problem(
                Reason.variant_required,
                "spec.source.variant",
                "with a uri source, say which model the files hold: variant: flash (GLM-4.7-Flash) or flagship (GLM-4.7); "
                "it decides the memory estimate and GPU placement",
            )
        )
        ok = False
    if kind is ArtifactKind.adapter:
        problems.append(
            Problem(
                Reason.adapter_needs_base,
                "spec.source.artifact",
                "a uri names one checkpoint; to serve adapters set spec.source.uri to the base checkpoint (artifact "
                "merged) and list the FineTuneJobs under spec.adapters",
            )
        )
        ok = False
    is_gguf = uri.lower().endswith(".gguf")
    if kind is ArtifactKind.gguf and not is_gguf:
        problems.append(
            Problem(
                Reason.artifact_runtime_mismatch,
                "spec.source.uri",
                f"{uri} does not name a .gguf file; llama.cpp loads one GGUF file: give its full path",
            )
        )
        ok = False
    if kind is ArtifactKind.merged and is_gguf:
        problems.append(
            Problem(
                Reason.artifact_runtime_mismatch,
                "spec.source.uri",
                f"{uri} is a GGUF file; vLLM loads a Hugging Face checkpoint folder: give the folder of the merged weights",
            )
        )
        ok = False
    if not ok or source.variant is None:
        return None
    quantization = source.quantization.value if source.quantization else None
    if kind is ArtifactKind.gguf and quantization is None:
        found = _QUANT_IN_NAME.search(uri.rsplit("/", 1)[-1])
        quantization = found.group(1).upper() if found else None
    return ResolvedModel(kind, source.variant.value, uri, None, None, quantization, spec.served_model_name)


def _check_names(spec: ModelDeploymentSpec, main: ResolvedModel | None, problems: list[Problem]) -> None:
    taken = {spec.served_model_name: "spec.servedModelName"}
    if main is not None and main.kind is ArtifactKind.adapter:
        taken[main.model_name] = "the base model's name"
    for index, entry in enumerate(spec.adapters):
        where = f"spec.adapters[{index}].servedModelName"
        if entry.served_model_name in taken:
            problems.append(
                Problem(
                    Reason.duplicate_model_name,
                    where,
                    f"{entry.served_model_name!r} is already {taken[entry.served_model_name]}; every served model needs its own name",
                )
            )
        taken.setdefault(entry.served_model_name, where)


def _same_base(job_base: str, base: str) -> bool:
    """Whether an adapter trained on `job_base` fits `base`: equal, or not comparable (a remote job base)."""
    job_base = job_base.rstrip("/")
    if job_base == base:
        return True
    return job_base.split("://", 1)[0] not in LOCAL_SCHEMES and base.split("://", 1)[0] in LOCAL_SCHEMES




def _not_produced(where: str, view: JobView, kind: str, recorded: bool = False) -> Problem:
    if recorded:
        message = (
            f"FineTuneJob {view.name!r} succeeded but its status records no {kind} artifact; check its "
            "status.artifacts and the export log, or serve another artifact"
        )
    else:
        message = (
            f"FineTuneJob {view.name!r} does not export {kind} (spec.output.formats: {', '.join(view.formats)}); "
            f"serve one of those, or train a job whose formats include {kind}"
        )
    return Problem(Reason.artifact_not_produced, where, message)


def _base_mismatch(where: str, view: JobView, base: str) -> Problem:
    return Problem(
        Reason.adapter_base_mismatch,
        where,
        f"FineTuneJob {view.name!r} trained a {view.variant} adapter on {view.base_source}, but this deployment serves "
        f"{base}; an adapter only works on its own base model: list only jobs trained on that base",
    )
