"""The hub's HTTP ingress and the Serve application that wires it to the experts.

``POST /v1/generate`` decodes the request once, sends the decoded arrays to the pre-filtered
experts that are up, waits for each (up to ``routing.expert_timeout_s``) and answers with the most
confident one; an expert that fails or times out is listed under ``failed``, marked down until a
probe gets an answer from it again (``health.py``), and the others answer.
``POST /v1/experts/<name>/generate`` is the same path with one named expert and no routing (the
fair baseline for the hub's overhead). ``GET /v1/experts`` lists the experts with their
calibration, ``GET /healthz`` says the ingress is up and which experts are down. Every refusal is
a 4xx with ``{"error": "<one line>"}``.
"""

# no ``from __future__ import annotations`` here: FastAPI must see ``Request`` as a class

import asyncio
import hashlib
import hmac
import time
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from multimodal.config import MediaSpec
from multimodal.hub.calibration import Calibration
from multimodal.hub.config import HubConfig
from multimodal.hub.health import ExpertHealth, probe_down_experts
from multimodal.hub.requests import BadRequest, decode_query, parse_body, spec_key
from multimodal.hub.router import ExpertAnswer, candidates, choose

API_KEY_HEADER = "x-api-key"
api = FastAPI(title="SLM hub", docs_url=None, redoc_url=None, openapi_url=None)


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


@serve.deployment(name="ingress")
@serve.ingress(api)
class HubIngress:
    """The HTTP front: limits, API key, decoding, broadcast, choice."""

    def __init__(self, handles: dict[str, Any], listing: list[dict[str, Any]],
                 specs: dict[str, dict[str, Any]], config: dict[str, Any], key_hash: str | None):
        self.handles = handles
        self.listing = listing
        self.config = HubConfig.model_validate(config)
        self.expert_specs = {name: MediaSpec.model_validate(spec) for name, spec in specs.items()}
        self.specs = {spec_key(spec): spec for spec in self.expert_specs.values()}
        self.key_hash = key_hash
        self.expert_modalities = {e["name"]: e["modalities"] for e in listing}
        self.health = ExpertHealth(list(handles))
        self._probes: asyncio.Task | None = None

    def _authorised(self, request: Request) -> bool:
        if self.key_hash is None:
            return True
        given = request.headers.get(API_KEY_HEADER, "")
        return hmac.compare_digest(hashlib.sha256(given.encode()).hexdigest(), self.key_hash)

    async def _body(self, request: Request) -> bytes:
        limit = self.config.server.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"body of {int(declared)} bytes is over the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"body over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "experts": len(self.listing), "health": self.health.snapshot()}

    @api.get("/v1/experts")
    async def experts(self, request: Request):
        if not self._authorised(request):
            return _error(401, f"missing or wrong API key (header {API_KEY_HEADER})")
        return {"experts": self.listing, "threshold": self.config.routing.threshold}

    @api.post("/v1/generate")
    async def generate(self, request: Request):
        """Route to the most confident of the (pre-filtered, healthy) experts."""
        return await self._answer(request, None)

    @api.post("/v1/experts/{name}/generate")
    async def generate_with(self, name: str, request: Request):
        """The named expert answers, no routing and no threshold (the same ingress path)."""
        if name not in self.handles:
            return _error(404, f"unknown expert {name!r}; known: {', '.join(self.handles)}")
        return await self._answer(request, name)

    async def _answer(self, request: Request, expert: str | None):
        started = time.perf_counter()
        if not self._authorised(request):
            return _error(401, f"missing or wrong API key (header {API_KEY_HEADER})")
        try:
            body = parse_body(await self._body(request), self.config.server.max_new_tokens)
            decoding = time.perf_counter()
            query = await asyncio.get_running_loop().run_in_executor(
                None, decode_query, body, self.specs)
        except BadRequest as exc:
            return _error(exc.status, exc.reason)
        asking = time.perf_counter()
        self._start_probes()
        if expert is not None:
            asked, down, threshold = [expert], {}, 0.0
        else:
            asked, down = self._healthy(
                candidates(query.modalities, self.expert_modalities, self.config.routing.prefilter))
            threshold = self.config.routing.threshold
        answers, failed = await self._route(query, asked, threshold)
        answered = time.perf_counter()
        for name, reason in failed.items():
            self.health.mark_down(name, reason)
        response = choose(answers, {**failed, **down}, threshold, (answered - started) * 1000,
                          skipped=[n for n in self.handles if n not in asked and n not in down])
        response["timing_ms"] = {  # where the ingress's time went (the benchmark's profile)
            "read_parse": round((decoding - started) * 1000, 3), "decode": round((asking - decoding) * 1000, 3),
            "experts": round((answered - asking) * 1000, 3),
            "generate_max": round(max((a.generate_ms for a in answers.values()), default=0.0), 3)}
        return JSONResponse(response, status_code=200 if answers else 503)

    def _healthy(self, wanted: list[str]) -> tuple[list[str], dict[str, str]]:
        """The wanted experts that are up (when none is, every other expert that is up), and
        the down ones with their reason."""
        down = {name: self.health.reason(name) for name in wanted if not self.health.is_up(name)}
        asked = [name for name in wanted if name not in down]
        if not asked:
            asked = [name for name in self.handles if name not in wanted and self.health.is_up(name)]
        return asked, down

    def _start_probes(self) -> None:
        if self._probes is None:
            routing = self.config.routing
            self._probes = asyncio.get_running_loop().create_task(probe_down_experts(
                self.health, self._ping, routing.probe_interval_s, routing.expert_timeout_s))

    async def _ping(self, name: str) -> None:
        response = self.handles[name].options(multiplexed_model_id=name).ping.remote()
        try:
            await response
        except asyncio.CancelledError:
            response.cancel()
            raise

    async def _route(self, query, asked: list[str], threshold: float):
        """The asked experts' answers. With several asked and ``routing.score_tokens`` = k, each
        only scores its first k tokens (calibrated for the whole answer's correctness) and the
        most confident one that clears the threshold generates the answer unless its k tokens
        already ended with ``<eos>`` (the next one if it fails); the losers never generate past
        k tokens."""
        k = self.config.routing.score_tokens
        if len(asked) < 2 or not k or query.max_new_tokens <= k:
            return await self._broadcast(query, asked)
        scores, failed = await self._broadcast(query, asked, max_new_tokens=k, score=True)
        for best in sorted(scores, key=lambda name: (-scores[name].confidence, name)):
            if scores[best].confidence < threshold or scores[best].finished:
                break  # refused, or its short answer is already whole
            full, lost = await self._broadcast(query, [best])
            if best in full:
                scores[best] = replace(scores[best], text=full[best].text,
                                       generate_ms=scores[best].generate_ms + full[best].generate_ms)
                break
            failed.update(lost)
        return {name: answer for name, answer in scores.items() if name not in failed}, failed

    async def _broadcast(self, query, names: list[str], max_new_tokens: int | None = None,
                         score: bool = False) -> tuple[dict[str, ExpertAnswer], dict[str, str]]:
        calls = [self._ask(name, {"prompt": query.prompt, "max_new_tokens": max_new_tokens or query.max_new_tokens,
                                  "media": query.for_spec(spec_key(self.expert_specs[name])), "score": score})
                 for name in names]
        results = await asyncio.gather(*calls, return_exceptions=True)
        answers, failed = {}, {}
        for name, result in zip(names, results):
            if isinstance(result, BaseException):
                failed[name] = _first_line(result)
            else:
                answers[name] = ExpertAnswer(result["text"], result["mean_logprob"], result["confidence"],
                                             result.get("generate_ms", 0.0), result.get("finished", True))
        return answers, failed

    async def _ask(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = self.handles[name].options(multiplexed_model_id=name).generate.remote(payload)
        try:
            return await asyncio.wait_for(response, timeout=self.config.routing.expert_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise TimeoutError(f"no answer within {self.config.routing.expert_timeout_s:g}s") from None


def build_app(config: HubConfig, calibrations: dict[str, Calibration], specs: dict[str, MediaSpec],
              api_key: str | None = None):
    """The Serve application: the ingress bound to the expert deployments (or to one pool)."""
    from multimodal.hub.expert import make_expert_deployment

    routing = config.routing
    experts = {e.name: {"model": e.model, "temperature": calibrations[e.name].temperature,
                        "score_temperature": calibrations[e.name].score_temperature}
               for e in config.experts}
    if config.pool is not None:
        pool = make_expert_deployment(config.pool.models_per_replica, routing.max_batch_size,
                                      routing.batch_wait_timeout_s)
        bound = pool.options(name="experts", num_replicas=config.pool.replicas,
                             health_check_period_s=routing.health_check_period_s,
                             ray_actor_options={"num_cpus": config.pool.num_cpus}).bind(experts)
        handles = {name: bound for name in experts}
    else:
        deployment = make_expert_deployment(1, routing.max_batch_size, routing.batch_wait_timeout_s)
        handles = {}
        for expert in config.experts:
            scaling: dict[str, Any] = (
                {"autoscaling_config": expert.autoscaling.model_dump()} if expert.autoscaling
                else {"num_replicas": expert.replicas})
            handles[expert.name] = deployment.options(
                name=f"expert-{expert.name}", max_ongoing_requests=4 * routing.max_batch_size,
                health_check_period_s=routing.health_check_period_s,
                ray_actor_options={"num_cpus": expert.num_cpus, "num_gpus": expert.num_gpus},
                **scaling).bind({expert.name: experts[expert.name]})
    listing = [{"name": e.name, "model": e.model, "calibration": calibrations[e.name].to_dict(),
                "modalities": e.modalities if e.modalities is not None else calibrations[e.name].modalities}
               for e in config.experts]
    key_hash = hashlib.sha256(api_key.encode()).hexdigest() if api_key else None
    ingress = HubIngress.options(
        num_replicas=config.server.ingress_replicas,
        ray_actor_options={"num_cpus": config.server.ingress_num_cpus})
    return ingress.bind(handles, listing, {n: s.model_dump() for n, s in specs.items()},
                        config.model_dump(mode="json"), key_hash)
