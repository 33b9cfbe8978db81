"""A study's trial files in Optuna's artifact store, so any machine can resume a dead worker's trial.

The store follows the study's artifact root (``study.user_attrs["artifact_root"]``):

- a folder: `optuna.artifacts.FileSystemArtifactStore` in ``<root>/<study>/artifacts`` (next to the
  run directories; a worker that mounts the root elsewhere passes ``--artifact-root``);
- ``s3://bucket[/prefix]``: `optuna.artifacts.Boto3ArtifactStore` on that bucket, keys under the
  prefix (``pip install "dsara[s3]"``; credentials and endpoint from the usual AWS settings, e.g.
  ``AWS_ENDPOINT_URL`` for MinIO or moto). Run directories are then local to each worker, in
  ``dsara study run --artifact-root DIR`` (default runs/studies).

After every search epoch the run directory's files (`SYNCED`: config, logs, architecture file and
checkpoint) are stored on the trial with `optuna.artifacts.upload_artifact`; ``trial.user_attrs
["artifacts"]`` maps each file name to its artifact id and ``artifact_epoch`` says which epoch
they hold. The first upload of a file creates its artifact; later epochs overwrite that same
artifact in the store, so a trial lists each file once (in optuna-dashboard too) and the store
holds one checkpoint per trial, not one per epoch. At the end ``result.json`` (the objective values
and the final metrics) is added.

A retried trial whose run directory holds no checkpoint (another machine, no shared filesystem)
downloads the files of the latest attempt of the trial it retries and resumes from that epoch.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DsaraError

SYNCED = ("config.json", "metrics.jsonl", "alpha_history.jsonl", "architecture.json",
          "checkpoint.pt")
RESULT = "result.json"
S3 = "s3://"
INSTALL_S3 = 'pip install "dsara[s3]" (boto3)'


def is_s3(root: str | Path | None) -> bool:
    return str(root or "").startswith(S3)


def parse_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/")."""
    bucket, _, prefix = url[len(S3):].partition("/")
    if not bucket:
        raise DsaraError(f"artifact root {url!r} names no bucket; use s3://BUCKET[/PREFIX]")
    return bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""


class PrefixedStore:
    """An artifact store whose ids live under a key prefix of another store (Optuna's
    Boto3ArtifactStore writes at the bucket's top level)."""

    def __init__(self, store, prefix: str):
        self.store, self.prefix = store, prefix

    def open_reader(self, artifact_id: str):
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def s3_store(url: str, check: bool = False):
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise DsaraError(f"an s3:// artifact root needs boto3: {INSTALL_S3}") from None
    from optuna.artifacts import Boto3ArtifactStore

    bucket, prefix = parse_s3(url)
    client = boto3.client("s3")
    if check:  # at `study create`: a wrong bucket or endpoint fails now, not in every trial
        try:
            client.head_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError) as e:
            raise DsaraError(f"cannot reach bucket {bucket!r} of {url}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}; check the bucket, the endpoint "
                             "(AWS_ENDPOINT_URL) and the credentials") from None
    store = Boto3ArtifactStore(bucket, client=client)
    return PrefixedStore(store, prefix) if prefix else store


def store_for(study, local_root: str | Path):
    """The study's artifact store (see the module docstring)."""
    from optuna.artifacts import FileSystemArtifactStore

    recorded = study.user_attrs.get("artifact_root")
    if is_s3(recorded):
        return s3_store(recorded)
    base = Path(local_root) / study.study_name / "artifacts"
    base.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(base)


@dataclass
class TrialArtifacts:
    """Uploads one trial's run-directory files; restores a retried trial's files."""

    trial: Any  # optuna.Trial
    store: Any  # an Optuna artifact store
    run_dir: Path

    def after_epoch(self, record: dict[str, Any]) -> None:
        """A search callback: the checkpoint of this epoch is written; store the run dir."""
        ids = dict(self.trial.user_attrs.get("artifacts") or {})
        for name in SYNCED:
            if (self.run_dir / name).is_file():
                ids[name] = self._put(self.run_dir / name, ids.get(name))
        self.trial.set_user_attr("artifacts", ids)
        self.trial.set_user_attr("artifact_epoch", int(record["epoch"]))

    def finish(self, values: list[float], metrics: dict[str, Any]) -> None:
        path = self.run_dir / RESULT
        path.write_text(json.dumps({"values": values, "metrics": metrics}, indent=2) + "\n",
                        encoding="utf-8")
        ids = dict(self.trial.user_attrs.get("artifacts") or {})
        ids[RESULT] = self._put(path, None)
        self.trial.set_user_attr("artifacts", ids)

    def _put(self, path: Path, artifact_id: str | None) -> str:
        from optuna.artifacts import upload_artifact

        if artifact_id is None:  # the first time: an artifact with its metadata on the trial
            return upload_artifact(artifact_store=self.store, file_path=str(path),
                                   study_or_trial=self.trial)
        with open(path, "rb") as fh:  # later epochs: new content for the same artifact
            self.store.write(artifact_id, fh)
        return artifact_id

    def restore(self, origin: int) -> int:
        """Download the files of the latest attempt of trial `origin` that stored any; returns
        its epoch (0: nothing stored, the retry starts over)."""
        source = latest_attempt(self.trial.study, origin, self.trial.number)
        if source is None:
            return 0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name, artifact_id in source.user_attrs["artifacts"].items():
            if name in SYNCED:
                download(self.store, artifact_id, self.run_dir / name)
        return int(source.user_attrs.get("artifact_epoch", 0))


def latest_attempt(study, origin: int, current: int):
    """Among trial `origin` and its earlier retries, the one whose stored files reach furthest."""
    attempts = [t for t in study.get_trials(deepcopy=False)
                if t.number != current and "checkpoint.pt" in (t.user_attrs.get("artifacts") or {})
                and (t.number == origin or t.user_attrs.get("retry_of") == origin)]
    return max(attempts, key=lambda t: (t.user_attrs.get("artifact_epoch", 0), t.number),
               default=None)


def download(store, artifact_id: str, path: Path) -> None:
    """Replace `path` by the artifact's content in one step (temp file + rename)."""
    from optuna.artifacts import download_artifact

    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.")) / path.name
    try:
        download_artifact(artifact_store=store, file_path=str(tmp), artifact_id=artifact_id)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.parent.rmdir()
