"""The job spec as command-line options: one flag per setting, the same in every command that makes a spec.

``spec_options`` adds to a typer command a ``--config FILE`` option (TOML or JSON) and one option per
setting of ``fedbpt.spec.JobSpec`` (``--population``, ``--step``, ``--ranking``, ...), with the spec's own
descriptions and defaults as help. The command receives the resolved ``JobSpec``: defaults, then the
config file, then the flags given. ``fedbpt simulate``, ``fedbpt compare`` and ``fedbpt job create`` use it,
so every knob one of them has, the others have too.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path

import typer
from pydantic.fields import FieldInfo

from fedbpt.protocol import encode_vector
from fedbpt.spec import JobSpec, SpecError, from_dict, load, to_dict

PINNED = {("model", "identity"), ("model", "hidden_size"), ("prompt", "scale"), ("prompt", "fingerprint")}
NOT_FLAGS = PINNED | {("prompt", "initial")}  # --start-from sets it from a prompt file
FLAG_NAMES = {("", "name"): "job_name", ("model", "name"): "model", ("search", "method"): "search"}
FLAG_NAMES |= {("privacy", key): f"privacy_{key}" for key in ("clip", "loss_clip", "noise", "delta", "epsilon")}


@dataclasses.dataclass(frozen=True)
class Setting:
    section: str  # "" for the spec's top level
    key: str
    parameter: str  # the command function's parameter name (the flag is its dashed form)
    kind: type
    default: object
    help: str

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}" if self.section else self.key


def _description(field: dataclasses.Field) -> str:
    info = field.default if isinstance(field.default, FieldInfo) else None
    return (info.description or "") if info else ""


def settings() -> list[Setting]:
    """Every setting a person may give, in the spec's order."""
    found = []
    defaults = to_dict(JobSpec())
    hints = typing.get_type_hints(JobSpec)
    for field in dataclasses.fields(JobSpec):
        if dataclasses.is_dataclass(hints[field.name]):
            section = hints[field.name]
            section_hints = typing.get_type_hints(section)
            for inner in dataclasses.fields(section):
                if (field.name, inner.name) in NOT_FLAGS:
                    continue
                found.append(_setting(field.name, inner, section_hints[inner.name], defaults[field.name][inner.name]))
        else:
            found.append(_setting("", field, hints[field.name], defaults[field.name]))
    return found


def _setting(section: str, field: dataclasses.Field, hint: object, default: object) -> Setting:
    kind = {bool: bool, int: int, float: float}.get(hint, str)  # Literals, unions and tuples are typed as text
    parameter = FLAG_NAMES.get((section, field.name), field.name)
    shown = ",".join(default) if isinstance(default, list) else default
    return Setting(section, field.name, parameter, kind, default, f"{_description(field)} (default: {shown})".strip())


def _parse(setting: Setting, value: object) -> object:
    if isinstance(value, str) and setting.path == "prompt.starts":
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def spec_from(config: Path | None, given: dict[str, object], start_from: Path | None = None) -> JobSpec:
    """Defaults, then the config file, then a learned prompt to start from, then the given flags (``None`` = not
    given)."""
    data = to_dict(load(config)) if config else to_dict(JobSpec())
    learned = None
    if start_from:
        from fedbpt.job import LearnedPrompt

        learned = LearnedPrompt.load(start_from)
        data = starting_from(data, learned)
    for setting in settings():
        value = given.get(setting.parameter)
        if value is None:
            continue
        target = data[setting.section] if setting.section else data
        target[setting.key] = _parse(setting, value)
    spec = from_dict(data)
    if learned is not None:
        _check_start(spec, learned, start_from)
    return spec


# What z needs to mean what it meant: the projection (seed, shape) and the model it was learned on.
PROJECTION_KEYS = (("", "seed"), ("model", "name"), ("prompt", "dim"), ("prompt", "n_tokens"), ("prompt", "placement"))


def _value(data: dict, section: str, key: str) -> object:
    return data[section][key] if section else data[key]


def starting_from(data: dict, learned) -> dict:
    """The spec's data set to search from a learned prompt: its start, its z as the initial prompt, and the
    settings z only means something under."""
    source = to_dict(learned.spec)
    for section, key in PROJECTION_KEYS:
        (data[section] if section else data)[key] = _value(source, section, key)
    data["prompt"] |= {"starts": [learned.start], "initial": encode_vector(learned.z)}
    return data


def _check_start(spec: JobSpec, learned, prompt_file: Path) -> None:
    mine, theirs = to_dict(spec), to_dict(learned.spec)
    differ = [
        f"{section + '.' if section else ''}{key} is {_value(mine, section, key)!r}, the prompt's "
        f"{_value(theirs, section, key)!r}"
        for section, key in PROJECTION_KEYS
        if _value(mine, section, key) != _value(theirs, section, key)
    ]
    if differ:
        raise SpecError(f"--start-from {prompt_file}: {'; '.join(differ)}; z only means something under those")


def spec_options(command: Callable) -> Callable:
    """Give ``command`` (which takes a ``spec: JobSpec`` parameter) a --config option and one option per setting."""
    own = inspect.signature(command)
    extra = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, help="a job spec (TOML or JSON); flags override it", rich_help_panel="Job spec"),
            annotation=Path | None,
        ),
        inspect.Parameter(
            "start_from",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                help="search from a learned prompt (a prompt or simulate results file): its start and z",
                rich_help_panel="Job spec",
            ),
            annotation=Path | None,
        ),
    ]
    for setting in settings():
        flag = "--" + setting.parameter.replace("_", "-")
        if setting.kind is bool:
            flag = f"{flag}/--no-{setting.parameter.replace('_', '-')}"
        extra.append(
            inspect.Parameter(
                setting.parameter,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, flag, help=setting.help, show_default=False, rich_help_panel="Job spec"),
                annotation=setting.kind | None,
            )
        )
    parameters = [parameter for parameter in own.parameters.values() if parameter.name != "spec"]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        given = {setting.parameter: kwargs.pop(setting.parameter, None) for setting in settings()}
        config, start_from = kwargs.pop("config", None), kwargs.pop("start_from", None)
        spec = spec_from(config, given, start_from)  # a SpecError is a UserError: one line, exit 2
        return command(*args, spec=spec, **kwargs)

    wrapper.__signature__ = own.replace(parameters=[*parameters, *extra])
    return wrapper
