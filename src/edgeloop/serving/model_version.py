"""One loaded model version: its session, signature, batcher, counters, and the inference hot path.

Requests hold the version they started on (``try_enter``/``leave``) so a hot swap or unload never
pulls a session from under a running request: ``retire`` stops new entries and waits for the
in-flight ones to finish.
"""
from __future__ import annotations

import threading
from time import perf_counter_ns

from edgeloop.protocol import inference_pb2
from edgeloop.protocol.errors import ProtocolError, internal, invalid_argument, quote, resource_exhausted
from edgeloop.serving.batcher import DynamicBatcher
from edgeloop.serving.signature import ModelSignature, output_raw, wire_bytes
from edgeloop.serving.stats import VersionStats

_Response = inference_pb2.ModelInferResponse
_OutputTensor = inference_pb2.ModelInferResponse.InferOutputTensor


def _run_error(exc: Exception, what: str) -> ProtocolError:
    """Who is at fault when onnxruntime fails a run, as a status.

    Its InvalidArgument is the request's fault, and so is a node that fails on inputs that passed the
    signature checks: the version answered its warm-up run, so the graph runs, and these inputs' shapes
    or values break one of its nodes (a Reshape, a broadcast).  Failing to allocate is RESOURCE_EXHAUSTED;
    anything else is the server's (INTERNAL).
    """
    text = quote((str(exc).strip().splitlines() or [type(exc).__name__])[0], 400)
    kind = type(exc).__name__
    if kind in ("InvalidArgument", "INVALID_ARGUMENT"):
        return invalid_argument(f"{what}: onnxruntime rejected the inputs: {text}")
    if isinstance(exc, MemoryError) or "allocate" in text:
        return resource_exhausted(f"{what}: onnxruntime ran out of memory for these inputs: {text}; expected "
                                  f"a smaller request")
    if kind in ("Fail", "RuntimeException") and "while running" in text:
        return invalid_argument(f"{what}: a node of the model failed on these inputs: {text}; expected inputs "
                                f"whose shapes and values the model's graph accepts")
    return internal(f"{what}: onnxruntime failed: {text}")


class ModelVersion:
    """A READY-able version of a model. Build it, ``warm_up()``, then route requests to ``infer``."""

    def __init__(self, name: str, version: int, session, signature: ModelSignature, config, fingerprint,
                 metrics, features=None) -> None:
        self.name = name
        #: ``serving.features.FeatureFront`` for a model with a feature definition (clients send raw inputs)
        self.features = features
        #: what clients send and ModelMetadata shows: the raw inputs of a model with features, else the graph's
        self.client_signature = features.signature if features is not None else signature
        #: the entity's online head (a definition with ``online``): corrects the outputs before the response
        self._adapt = features.adapt if features is not None and features.online is not None else None
        self.version = version
        self.version_str = str(version)
        self.session = session
        self.signature = signature
        self.config = config
        self.fingerprint = fingerprint
        self.stats = VersionStats(name, self.version_str)
        self.metrics = metrics
        self.what = f"model {name!r} version {version}"
        self._run = session.run
        self._all_output_names = list(signature.output_names)
        self._output_index = {n: i for i, n in enumerate(signature.output_names)}
        self._input_names = tuple(s.name for s in signature.inputs)
        self._head_template = _Response(model_name=name, model_version=self.version_str)
        self._full_template = _Response(model_name=name, model_version=self.version_str, outputs=[
            _OutputTensor(name=spec.name, datatype=spec.datatype) for spec in signature.outputs])
        self._bytes_outputs = any(spec.is_bytes for spec in signature.outputs)
        # the plain lock is taken twice per request (enter, leave); the condition only by retire
        self._lock = threading.Lock()
        self._gate = threading.Condition(self._lock)
        self._inflight = 0
        self._accepting = True
        self._batcher = None
        if config.max_batch_size > 0:
            self._batcher = DynamicBatcher(
                self._run_all, self._input_names, config.max_batch_size, config.max_queue_delay_us,
                config.preferred_batch_sizes, self._on_execution, max_queue_size=config.max_queue_size,
                what=self.what)

    # ---------------------------------------------------------------------------- lifecycle
    def warm_up(self) -> None:
        """One run on zero inputs (dynamic dims = 1): a version is READY only once this answers."""
        outputs = self._run(self._all_output_names, self.signature.warmup_feeds())
        if len(outputs) != len(self._all_output_names):
            raise RuntimeError(f"warm-up returned {len(outputs)} outputs; expected {len(self._all_output_names)}")

    def try_enter(self) -> bool:
        """Count a request in; False once the version is retiring."""
        with self._lock:
            if not self._accepting:
                return False
            self._inflight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0 and not self._accepting:
                self._gate.notify_all()

    @property
    def inflight(self) -> int:
        """Requests of this version waiting in the batcher or running."""
        return self._inflight

    def retire(self, timeout_s: float) -> bool:
        """Refuse new requests and wait (bounded) for in-flight ones; True if all finished."""
        with self._gate:
            self._accepting = False
            drained = self._gate.wait_for(lambda: self._inflight == 0, timeout_s)
        self.metrics.release(self.stats)
        return drained

    # ----------------------------------------------------------------------------- hot path
    def _run_all(self, feeds):
        try:
            return self._run(self._all_output_names, feeds)
        except Exception as exc:
            raise _run_error(exc, self.what) from None

    def _on_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.stats.record_execution(batch_size, input_ns, infer_ns, output_ns)

    def infer(self, request, t_start: int):
        """Answer one ModelInferRequest (the caller holds ``try_enter``); failures are counted and re-raised."""
        try:
            signature = self.signature
            if self.features is None:
                feeds, batch = signature.decode(request)
            else:  # raw inputs + the entity's state -> the full vectors the graph takes
                feeds, batch = self.features.enrich(request)
            specs = signature.requested_outputs(request)
            t_decoded = perf_counter_ns()
            decode_ns = t_decoded - t_start
            adapt = self._adapt
            if self._batcher is None:
                every = specs is signature.outputs or adapt is not None
                names = self._all_output_names if every else [s.name for s in specs]
                try:
                    outputs = self._run(names, feeds)
                except Exception as exc:
                    raise _run_error(exc, self.what) from None
                if adapt is not None:  # the entity's online head corrects the model's output
                    outputs = adapt(request, outputs)
                    if specs is not signature.outputs:
                        index = self._output_index
                        outputs = [outputs[index[s.name]] for s in specs]
                infer_ns = perf_counter_ns() - t_decoded
                queue_ns = -1
            else:
                key = tuple(feeds[n].shape[1:] for n in self._input_names)
                result = self._batcher.submit(feeds, batch, key)
                outputs = result.outputs
                if adapt is not None:
                    outputs = adapt(request, outputs)
                if specs is not signature.outputs:
                    index = self._output_index
                    outputs = [outputs[index[s.name]] for s in specs]
                infer_ns = result.infer_ns
                queue_ns = result.queue_ns
                input_ns = decode_ns + result.input_ns
                inferences = batch
            t_output = perf_counter_ns()
            response = self._respond(request, specs, outputs)
            t_end = perf_counter_ns()
        except ProtocolError:
            self.record_failure(t_start)
            raise
        except Exception as exc:
            self.record_failure(t_start)
            raise internal(f"{self.what}: {type(exc).__name__}: {exc}") from None
        # the statistics are also the Prometheus data (exported at scrape time): one record, one lock
        if queue_ns < 0:  # ran alone, unbatched: one execution of batch size 1, no queue
            self.stats.record_solo(t_end - t_start, decode_ns, infer_ns, t_end - t_output)
        else:
            self.stats.record_success(inferences, t_end - t_start, queue_ns, input_ns, infer_ns, t_end - t_output)
        return response

    def _respond(self, request, specs, outputs):
        """The response message: copied from a template made at load time, then shapes and bytes filled in.

        ``CopyFrom`` of a prebuilt message is cheaper than building name/version/output tensors from
        keyword arguments on every request.
        """
        response = _Response()
        if specs is self.signature.outputs:
            response.CopyFrom(self._full_template)
            response.id = request.id
            if len(outputs) == 1 and not self._bytes_outputs:
                array = outputs[0]
                response.outputs[0].shape.extend(array.shape)
                response.raw_output_contents.append(wire_bytes(array))
                return response
            tensors = response.outputs
            for i, array in enumerate(outputs):
                tensors[i].shape.extend(array.shape)
        else:
            response.CopyFrom(self._head_template)
            response.id = request.id
            add = response.outputs.add
            for spec, array in zip(specs, outputs):
                add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        if self._bytes_outputs:
            response.raw_output_contents.extend([output_raw(s, a) for s, a in zip(specs, outputs)])
        else:
            response.raw_output_contents.extend([wire_bytes(a) for a in outputs])
        return response

    def record_failure(self, t_start: int) -> None:
        self.stats.record_failure(perf_counter_ns() - t_start)


__all__ = ["ModelVersion"]
