"""Request and response bodies of the query service, with their limits taken from ``serve`` settings.

The limits (list sizes, k, audience size) are part of the schema, so FastAPI rejects an oversized or
mistyped request with 422 before any handler runs, and the OpenAPI spec documents them. User ids are
strict JSON integers within int64: ``"42"``, ``4.2``, ``true`` or 2**70 are type errors, not guesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, create_model

from store.graph.settings import GraphSettings
from store.service.settings import ServeSettings

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UserId = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX, description="int64 user id")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Neighbour(BaseModel):
    user_id: int
    score: float = Field(description="cosine similarity")


class NeighboursResponse(BaseModel):
    user_id: int
    model_version: str
    neighbours: list[Neighbour] = Field(description="best first")


class VectorResponse(BaseModel):
    user_id: int
    model_version: str
    vector: list[float]


class VectorsResponse(BaseModel):
    model_version: str
    vectors: list[list[float] | None] = Field(description="aligned with user_ids; null when unknown")
    missing: list[int] = Field(description="requested ids without a vector")


class Candidate(BaseModel):
    item_id: int
    score: float = Field(description="sum of the similarities of the neighbours who engaged")


class CandidatesResponse(BaseModel):
    user_id: int
    model_version: str
    candidates: list[Candidate]


class LookalikeResponse(BaseModel):
    model_version: str
    graph_as_of: str
    method: str
    user_ids: list[int] = Field(description="the audience, best first")
    scores: list[float]
    seeds_used: int
    missing_seeds: list[int] = Field(description="seed ids without a vector (first 1000)")


class Problem(BaseModel):
    detail: str


class VectorsRequest(Strict):
    """POST /v1/vectors (the app's subclass adds the ``serve.max_batch`` limit)."""

    user_ids: list[UserId]


class LookalikeRequest(Strict):
    """POST /v1/lookalike (the app's subclass adds the seed and audience limits)."""

    seed_user_ids: list[UserId]
    size: StrictInt = 1000
    exclude_seeds: bool = True
    method: Literal["centroid", "multi_centroid", "max_seed"] | None = Field(
        default=None, description="seed scoring; default graph.lookalike_method"
    )


@dataclass(frozen=True)
class Requests:
    """The request models built for one set of limits."""

    vectors: type[VectorsRequest]
    lookalike: type[LookalikeRequest]


def request_models(serve: ServeSettings, graph: GraphSettings) -> Requests:
    """Request bodies whose limits come from the settings (one class per app)."""

    vectors = create_model(
        "VectorsRequest",
        __base__=VectorsRequest,
        user_ids=(list[UserId], Field(min_length=1, max_length=serve.max_batch)),
    )
    lookalike = create_model(
        "LookalikeRequest",
        __base__=LookalikeRequest,
        seed_user_ids=(list[UserId], Field(min_length=1, max_length=min(serve.max_seeds, graph.max_seeds))),
        size=(StrictInt, Field(default=1000, ge=1, le=min(serve.max_audience, graph.max_audience))),
    )
    return Requests(vectors, lookalike)
