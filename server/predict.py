"""A prediction server for one learned prompt: ``uvicorn server.predict:app``, or ``fedbpt serve PROMPT``.

It loads the prompt's model once, at startup, and answers ``POST /v1/predict`` with each text's label and its
calibrated probabilities, as ``fedbpt predict`` computes them. It shares the coordinator's error shape, body limit
and bearer-token check. Settings come from the environment when none are given (``PredictSettings.from_env``).
"""

from __future__ import annotations

import asyncio
import hmac
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from fedbpt.data import Example
from fedbpt.errors import UserError
from fedbpt.job import LearnedPrompt, prompted_model
from fedbpt.models import DTYPES, load_backend
from fedbpt.objective import PromptedModel
from server import errors
from server.app import BodyLimit
from server.auth import bearer, bearer_token
from server.schemas import refusals

MAX_TEXT_CHARS = 4000  # about a thousand tokens: every built-in task's texts fit


@dataclass(frozen=True)
class PredictSettings:
    prompt: Path
    token: str
    model: str | None = None  # default: the prompt's model
    dtype: str = "bfloat16"
    threads: int = 0  # torch threads; 0 = torch's default
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 10.0  # BodyLimit: longest a request body may take to arrive
    max_texts: int = 64  # per request

    def __post_init__(self) -> None:
        if len(self.token) < 16:
            raise UserError(
                "the prediction token (--token or FEDBPT_PREDICT_TOKEN) must be a secret of at least 16 characters: "
                'export FEDBPT_PREDICT_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(32))")'
            )
        if self.dtype not in DTYPES:
            raise UserError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")

    @classmethod
    def from_env(cls) -> PredictSettings:
        prompt = os.environ.get("FEDBPT_PROMPT", "")
        if not prompt:
            raise UserError("FEDBPT_PROMPT must name a prompt file (from 'fedbpt job prompt' or 'fedbpt simulate')")
        return cls(
            prompt=Path(prompt),
            token=os.environ.get("FEDBPT_PREDICT_TOKEN", ""),
            model=os.environ.get("FEDBPT_MODEL") or None,
            dtype=os.environ.get("FEDBPT_DTYPE", cls.dtype),
            threads=int(os.environ.get("FEDBPT_THREADS", cls.threads)),
            max_body_bytes=int(os.environ.get("FEDBPT_MAX_BODY_BYTES", cls.max_body_bytes)),
            body_timeout_s=float(os.environ.get("FEDBPT_BODY_TIMEOUT_S", cls.body_timeout_s)),
            max_texts=int(os.environ.get("FEDBPT_MAX_TEXTS", cls.max_texts)),
        )


@dataclass(frozen=True)
class Served:
    """The learned prompt and its model, loaded once."""

    prompt: LearnedPrompt
    prompted: PromptedModel
    model: str

    @classmethod
    def load(cls, settings: PredictSettings) -> Served:
        prompt = LearnedPrompt.load(settings.prompt)
        model = settings.model or prompt.spec.model.name
        backend = load_backend(model, settings.dtype, settings.threads or None)
        return cls(prompt, prompted_model(prompt.spec, backend).with_start(prompt.start), model)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(texts, labels): the exp of the calibrated scores, renormalised against rounding."""
        scores = self.prompted.scores(self.prompt.z, self.prompted.encode([Example(text, 0) for text in texts]))[0]
        probabilities = np.exp(scores)
        return probabilities / probabilities.sum(axis=1, keepdims=True)


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[Text] = Field(min_length=1, description="texts to classify (at most FEDBPT_MAX_TEXTS)")


class Prediction(BaseModel):
    label: str = Field(description="the most probable label's name")
    index: int = Field(description="its index in the task's labels")
    probabilities: dict[str, float] = Field(description="every label's calibrated probability; they sum to 1")

    @classmethod
    def of(cls, labels: tuple[str, ...], row: np.ndarray) -> Prediction:
        index = int(row.argmax())
        return cls(label=labels[index], index=index, probabilities=dict(zip(labels, row.tolist(), strict=True)))


class Predictions(BaseModel):
    predictions: list[Prediction]
    model: str
    task: str
    round: int = Field(description="the federation round after which this prompt was the global one")


class ServedPrompt(BaseModel):
    task: str
    labels: list[str]
    model: str
    start: str
    round: int
    loss: float | None = Field(description="its pooled training loss")
    job: str


def _wrong_token(token: str, settings: PredictSettings) -> errors.Refusal | None:
    if hmac.compare_digest(token.encode(), settings.token.encode()):
        return None
    return errors.Refusal(401, "bad_token", "wrong token; use the one this server was started with")


def _refusal_before_body(authorization: str | None, state: State) -> errors.Refusal | None:
    """For BodyLimit: a large body is read only for the right token."""
    scheme, token = get_authorization_scheme_param(authorization)
    if scheme.lower() != "bearer" or not token:
        return errors.Refusal(401, "missing_token", "send 'Authorization: Bearer <token>'")
    return _wrong_token(token, state.settings)


async def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
    refusal = _wrong_token(bearer_token(credentials), request.app.state.settings)
    if refusal is not None:
        raise refusal


router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Depends(require_token)])


@router.post("/predict", responses=refusals(401, 413, 422))
async def predict(body: PredictRequest, request: Request) -> Predictions:
    """Each text's label and calibrated probabilities. Scoring runs in the threadpool, so that this CPU work does
    not stall the event loop, and one batch at a time, since the model is not thread-safe."""
    served, limit = request.app.state.served, request.app.state.settings.max_texts
    if len(body.texts) > limit:
        message = f"texts: at most {limit} texts per request (FEDBPT_MAX_TEXTS), got {len(body.texts)}"
        raise errors.Refusal(422, "invalid_request", message)
    async with request.app.state.scoring:
        probabilities = await run_in_threadpool(served.probabilities, body.texts)
    task = served.prompted.task
    predictions = [Prediction.of(task.label_names, row) for row in probabilities]
    return Predictions(predictions=predictions, model=served.model, task=task.name, round=served.prompt.round)


@router.get("/prompt", responses=refusals(401))
async def prompt(request: Request) -> ServedPrompt:
    """What is being served: the task and its labels, the model, and the prompt's start, round and loss."""
    served: Served = request.app.state.served
    learned, task = served.prompt, served.prompted.task
    return ServedPrompt(
        task=task.name,
        labels=list(task.label_names),
        model=served.model,
        start=learned.start,
        round=learned.round,
        loss=learned.loss,
        job=learned.job,
    )


def create_predict_app(settings: PredictSettings | None = None) -> FastAPI:
    """The app; without ``settings`` they are read from the environment when it starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings or PredictSettings.from_env()
        app.state.served = Served.load(app.state.settings)
        app.state.scoring = asyncio.Lock()
        yield

    app = FastAPI(
        title="fedbpt predict",
        description="Classifies texts with one learned FedBPT prompt.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(router)
    app.openapi = partial(errors.openapi, app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        return {"status": "ok"}

    app.add_middleware(BodyLimit, refusal_before_body=_refusal_before_body)
    app.add_middleware(errors.OneLineStartupError)
    return app


app = create_predict_app()
