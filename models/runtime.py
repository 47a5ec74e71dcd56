"""Inference backends: onnxruntime (fp32 or int8 artifact) and LiteRT.

A runner takes and returns ``{tensor name: numpy array}``; it knows nothing of texts or
sessions. Runners are safe to call from several threads.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from models.bundle import Bundle, BundleError


class Runner(Protocol):
    backend: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtRunner:
    def __init__(self, path: Path, backend: str, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors on bad files
            raise BundleError(f"{path}: onnxruntime cannot load it ({exc})") from None
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.backend = backend

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, inputs)))


def _litert_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # older installs only have the predecessor package
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


class LiteRTRunner:
    """LiteRT interpreter; resized only when an input shape changes (resizing costs ~20 us)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        Interpreter = _litert_interpreter_class()
        try:
            self._interp = Interpreter(model_path=str(path), num_threads=threads)
            self._interp.allocate_tensors()
        except Exception as exc:
            raise BundleError(f"{path}: LiteRT cannot load it ({exc})") from None
        self._inputs = {d["name"]: d["index"] for d in self._interp.get_input_details()}
        self._outputs = {d["name"]: d["index"] for d in self._interp.get_output_details()}
        self._shapes: dict[str, tuple[int, ...]] = {}
        # An interpreter owns mutable tensors: one call at a time.
        self._lock = threading.Lock()
        self.backend = "tflite"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            resized = False
            for name, value in inputs.items():
                if self._shapes.get(name) != value.shape:
                    self._interp.resize_tensor_input(self._inputs[name], list(value.shape), strict=False)
                    self._shapes[name] = value.shape
                    resized = True
            if resized:
                self._interp.allocate_tensors()
            for name, value in inputs.items():
                self._interp.set_tensor(self._inputs[name], value)
            self._interp.invoke()
            return {name: self._interp.get_tensor(index).copy() for name, index in self._outputs.items()}


def open_runner(bundle: Bundle, backend: str = "onnx", threads: int = 1) -> Runner:
    path = bundle.artifact(backend)
    if not path.is_file():
        raise BundleError(f"{bundle.path}: no {path.name} for backend {backend!r}")
    if backend == "tflite":
        return LiteRTRunner(path, threads)
    return OrtRunner(path, backend, threads)
