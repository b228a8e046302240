"""OpenVINO engines: the IR of a model run by the CPU plugin in f32, bf16 or int8.

Precision is always asked for explicitly (``INFERENCE_PRECISION_HINT``): the CPU plugin
runs bf16 by default where the CPU supports it, so an unset hint would silently change
what a "f32" figure means. The precision the compiled model reports back is recorded.

Latency mode keeps one infer request and one preallocated input and output tensor per
batch size that share memory with NumPy arrays: a call copies the batch into the input
array, runs the request and copies the output, with no per-call allocation or dictionary
building. Throughput mode keeps twice the plugin's optimal number of requests busy
through an ``AsyncInferQueue``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from fmnist.engines.registry import (
    VARIANT_ARTIFACT,
    EngineInfo,
    register_engine,
    variant_artifact,
)
from fmnist.io import FmnistError, RunLayout
from fmnist.system import has_int8_dot_product

INPUT_SHAPE = (28, 28, 1)
# Execution precision asked of the plugin for each variant (the IR each reads is the
# registry's variant_artifact; an int8 IR runs its quantized layers in int8).
VARIANT_PRECISION = {"openvino-f32": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32"}
PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
# Throughput mode queues this many requests per optimal request (one per stream): while
# one runs, the next waits in the stream's queue, so no stream idles while Python reads
# a result and hands over the next batch (a parser thread may hold the GIL meanwhile).
QUEUED_PER_REQUEST = 2


class VariantUnsupported(FmnistError):
    """This machine cannot run the variant as asked (e.g. bf16 on a CPU without bf16).

    The benchmark records such a variant as skipped with this message as the reason.
    """


@lru_cache(maxsize=1)
def core():
    """The process-wide OpenVINO runtime core (creating one loads the plugins)."""
    import openvino as ov

    return ov.Core()


def cpu_capabilities() -> list[str]:
    """The CPU plugin's optimization capabilities, e.g. ['FP32', 'INT8', 'BF16']."""
    return [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def _precision_name(value) -> str:
    # The plugin reports an ov.Type ('float32', 'bf16', ...); name it as our variants do.
    text = str(getattr(value, "type_name", None) or value).lower()
    return {"float32": "f32", "fp32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text, text)


def plugin_reason(exc: Exception) -> str:
    """The line of an OpenVINO error that says what went wrong.

    The runtime's messages open with a trace of 'Exception from <file>:<line>:' and
    'Check ... failed at ...' lines; the reason is the last line after them.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (reasons or lines or ["no reason given"])[-1]


def read_ir(xml: Path):
    """Read an IR, with a clear error naming the file when it is missing or damaged."""
    xml = Path(xml)
    bin_path = xml.with_suffix(".bin")
    for path in (xml, bin_path):
        if not path.is_file():
            raise FmnistError(
                f"{path}: OpenVINO IR file not found (run 'fmnist-batch optimize' first)"
            )
    try:
        return core().read_model(str(xml), str(bin_path))
    except RuntimeError as exc:
        raise FmnistError(f"{xml}: cannot read OpenVINO IR ({plugin_reason(exc)})") from exc


# Where an INT8 IR says it needs int8 dot products (VNNI or AMX): its first layer keeps
# full 8-bit weights, whose products AVX2's 16-bit pair sums can saturate.
NEEDS_INT8_DOT_PRODUCT = ["fmnist", "needs_int8_dot_product"]


def mark_needs_int8_dot_product(model) -> None:
    """Record in an IR that only CPUs with VNNI or AMX run it as it was checked."""
    model.set_rt_info("true", NEEDS_INT8_DOT_PRODUCT)


def needs_int8_dot_product(model) -> bool:
    """Whether an IR was marked by :func:`mark_needs_int8_dot_product`."""
    if not model.has_rt_info(NEEDS_INT8_DOT_PRODUCT):
        return False
    return str(model.get_rt_info(NEEDS_INT8_DOT_PRODUCT).astype(str)).lower() == "true"


def compile_ir(xml: Path, precision: str, mode: str, batch: int | None = None):
    """Compile an IR for the CPU with explicit precision and performance hints.

    ``batch`` fixes the (dynamic) batch dimension for this compilation. A bf16 request
    on a CPU the plugin does not run bf16 on raises VariantUnsupported instead of
    quietly running f32, and so does an INT8 IR that needs VNNI or AMX on a CPU without.
    """
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        raise VariantUnsupported(
            "bf16 inference needs a CPU with native bf16 (AVX512_BF16 or AMX); this CPU's "
            f"OpenVINO capabilities are {', '.join(cpu_capabilities())}"
        )
    model = read_ir(xml)
    if needs_int8_dot_product(model) and not has_int8_dot_product():
        raise VariantUnsupported(
            f"{xml}: this INT8 IR keeps 8-bit weights in its first layer, checked for CPUs "
            "with VNNI or AMX; int8 kernels here use neither (the CPU's flags, or "
            "ONEDNN_MAX_CPU_ISA), and their int8 products can saturate (run 'fmnist-batch "
            "optimize --int8' on this node type)"
        )
    if batch is not None:
        model.reshape([batch, *INPUT_SHAPE])
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": PERFORMANCE_HINTS[mode],
    }
    try:
        compiled = core().compile_model(model, "CPU", config)
    except RuntimeError as exc:
        if precision == "bf16":
            # The plugin can report BF16 yet lack bf16 kernels for a layer, e.g. with
            # oneDNN's ISA capped (ONEDNN_MAX_CPU_ISA=AVX2): this CPU cannot run it.
            raise VariantUnsupported(
                f"{xml}: the CPU plugin cannot compile this IR for bf16 ({plugin_reason(exc)})"
            ) from exc
        raise FmnistError(f"{xml}: OpenVINO cannot compile this IR ({plugin_reason(exc)})") from exc
    executed = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if executed != precision:
        raise VariantUnsupported(
            f"asked the CPU plugin for {precision}, it compiled {xml} for {executed}"
        )
    return compiled


COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")
_RUNTIME_PRECISIONS = {"u8": "int8", "i8": "int8", "f32": "f32", "bf16": "bf16", "f16": "f16"}


def executed_precision(compiled) -> str:
    """The precision the compute layers actually run in, from the plugin's runtime graph.

    'int8' for a quantized IR, the hint's precision otherwise; a mix (layers left in
    f32 by accuracy-controlled quantization) reads 'int8+f32'.
    """
    seen = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if str(info["layerType"].astype(str)) not in COMPUTE_LAYERS:
            continue
        precision = str(info["runtimePrecision"].astype(str))
        name = _RUNTIME_PRECISIONS.get(precision, precision)
        if name not in seen:
            seen.append(name)
    order = ["int8", "bf16", "f16", "f32"]
    return "+".join(sorted(seen, key=lambda p: order.index(p) if p in order else len(order)))


class _SyncRunner:
    """One infer request of a compiled model, with preallocated input and output per batch size.

    The tensors share memory with NumPy arrays: a call copies the batch into the input
    array, runs the request and copies the output array: no per-call allocation, result
    dictionary or tensor wrapper (asking for the output tensor each call cost 1.5-3 us,
    against backup1's 70 us inference).
    """

    def __init__(self, compiled):
        self.request = compiled.create_infer_request()
        output = compiled.output(0)
        self.classes = output.get_partial_shape()[1].get_length()
        self.output_dtype = output.get_element_type().to_dtype()
        self.buffers: dict[int, tuple[np.ndarray, np.ndarray, object, object]] = {}
        self.bound: int | None = None

    def buffers_for(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The input and output arrays for ``size`` images, bound to the request."""
        entry = self.buffers.get(size)
        if entry is None:
            import openvino as ov

            inputs = np.zeros((size, *INPUT_SHAPE), dtype=np.float32)
            outputs = np.zeros((size, self.classes), dtype=self.output_dtype)
            entry = (
                inputs,
                outputs,
                ov.Tensor(inputs, shared_memory=True),
                ov.Tensor(outputs, shared_memory=True),
            )
            self.buffers[size] = entry
        if self.bound != size:
            self.request.set_input_tensor(entry[2])
            self.request.set_output_tensor(entry[3])
            self.bound = size
        return entry[0], entry[1]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        inputs, outputs = self.buffers_for(len(batch))
        np.copyto(inputs, batch)
        # start_async + wait runs the request on the stream's pinned threads, as
        # benchmark_app does (infer() runs it on this thread: slower for main).
        self.request.start_async()
        self.request.wait()
        return outputs.copy()


class OpenVINOEngine:
    """An IR compiled for the CPU plugin, in latency or throughput mode.

    Latency mode compiles the IR for batch 1 (static shapes skip per-call shape
    inference, about a tenth of backup1's latency) and compiles the dynamic-batch IR
    only when another batch size comes. Throughput mode runs the dynamic-batch IR.
    """

    def __init__(self, xml: Path, variant: str, precision: str, mode: str):
        self.variant = variant
        self.mode = mode
        self._xml, self._precision = xml, precision
        self.compiled = compile_ir(xml, precision, mode, 1 if mode == "latency" else None)
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queued_requests = QUEUED_PER_REQUEST * self.requests
        self.info = EngineInfo(
            variant=variant,
            model_path=str(xml),
            executed_precision=executed_precision(self.compiled),
            threads=int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            details={
                "performance_hint": PERFORMANCE_HINTS[mode],
                "inference_precision_hint": _precision_name(
                    self.compiled.get_property("INFERENCE_PRECISION_HINT")
                ),
                "streams": int(self.compiled.get_property("NUM_STREAMS")),
                "infer_requests": self.requests,
                "queued_requests": self.queued_requests,
                "ir": VARIANT_ARTIFACT[variant],
                "batch_1_static": mode == "latency",
            },
        )
        self._runner = _SyncRunner(self.compiled)
        self._last = self._runner
        self._dynamic_runner: _SyncRunner | None = None if mode == "latency" else self._runner
        self._queue = None

    # ------------------------------------------------------------------ latency path

    def _infer_one(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 1 or self.mode == "throughput":
            self._last = self._runner
        else:
            if self._dynamic_runner is None:
                compiled = compile_ir(self._xml, self._precision, self.mode)
                self._dynamic_runner = _SyncRunner(compiled)
            self._last = self._dynamic_runner
        return self._last.infer(batch)

    def request_latency_ms(self) -> float:
        """The runtime's own time for the last synchronous call (what benchmark_app reports).

        The difference to the caller's wall time is the Python-to-runtime hand-off.
        """
        return float(self._last.request.latency)

    # ------------------------------------------------------------------ throughput path

    def _async_queue(self):
        if self._queue is None:
            import openvino as ov

            self._queue = ov.AsyncInferQueue(self.compiled, self.queued_requests)
            # Read-only access to each request, wrapped once rather than per batch.
            self._queue_requests = [self._queue[i] for i in range(self.queued_requests)]
            self._queue_inputs: list[np.ndarray | None] = [None] * self.queued_requests
        return self._queue

    def _request_input(self, request_id: int, rows: int) -> np.ndarray:
        """The idle request's own input array for ``rows`` images, grown when a batch is larger."""
        array = self._queue_inputs[request_id]
        if array is None or len(array) < rows:
            array = np.empty((rows, *INPUT_SHAPE), dtype=np.float32)
            self._queue_inputs[request_id] = array
        return array[:rows]

    def predict_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Probabilities for each batch, in order, keeping every infer request busy.

        A batch is copied into the request that runs it when it is taken, so the caller
        may write the next batch into the same array.
        """
        if self.mode == "latency":
            for batch in batches:
                yield self._infer_one(batch)
            return
        import openvino as ov

        queue = self._async_queue()
        requests = self._queue_requests
        # No Python callback: a request that comes back idle still holds the output of
        # the batch it ran, which is read before the request is reused (as benchmark_app
        # does). Completion threads then never need the GIL.
        in_flight: dict[int, int] = {}  # request id -> batch index
        results: dict[int, np.ndarray] = {}
        next_out = 0
        try:
            for index, batch in enumerate(batches):
                request_id = queue.get_idle_request_id()
                if request_id in in_flight:
                    done = in_flight.pop(request_id)
                    results[done] = requests[request_id].get_output_tensor(0).data.copy()
                # Each request reads its own array in place: no allocation per batch.
                own = self._request_input(request_id, len(batch))
                np.copyto(own, batch)
                requests[request_id].set_input_tensor(ov.Tensor(own, shared_memory=True))
                queue.start_async()
                in_flight[request_id] = index
                while next_out in results:
                    yield results.pop(next_out)
                    next_out += 1
        finally:
            # Also when the caller stops early or the batches raise: the next call
            # finds every request idle, its input array free to grow.
            queue.wait_all()
        for request_id, done in in_flight.items():
            results[done] = requests[request_id].get_output_tensor(0).data.copy()
        while next_out in results:
            yield results.pop(next_out)
            next_out += 1

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) for a float32 batch (N, 28, 28, 1)."""
        if self.mode == "latency" or len(batch) < 2 * self.requests:
            return self._infer_one(batch)
        # Split a large batch over the parallel requests (one per stream).
        parts = np.array_split(batch, self.requests)
        return np.concatenate(list(self.predict_many(parts)))


def _factory(variant: str):
    def build(layout: RunLayout, model: str, mode: str) -> OpenVINOEngine:
        xml = variant_artifact(layout.root, model, variant)
        return OpenVINOEngine(xml, variant, VARIANT_PRECISION[variant], mode)

    return build


for _variant in VARIANT_PRECISION:
    register_engine(_variant)(_factory(_variant))
