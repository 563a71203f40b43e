"""OpenTelemetry spans for every stage, joined into one trace per request: the W3C trace
context travels in gRPC metadata (``traceparent``/``tracestate``).

Exporter, from the environment of each process (DESIGN.md §8):
  EMU35_TRACE_EXPORTER = none (default) | otlp | file
  EMU35_OTLP_ENDPOINT  = collector address for otlp (e.g. http://127.0.0.1:4317)
  EMU35_TRACE_FILE     = JSON-lines file for the file exporter (tests, debugging)
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider: TracerProvider | None = None


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per finished span (name, ids, stage attributes)."""

    def __init__(self, path: str):
        self.path = path

    def export(self, spans) -> SpanExportResult:
        with _lock, open(self.path, "a") as f:
            for s in spans:
                ctx, parent = s.get_span_context(), s.parent
                f.write(json.dumps({
                    "name": s.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                    "parent_id": f"{parent.span_id:016x}" if parent else None,
                    "attributes": dict(s.attributes or {})}) + "\n")
        return SpanExportResult.SUCCESS


def tracer() -> trace.Tracer:
    """This process's tracer, configured from the environment on first use."""
    global _provider
    with _lock:
        if _provider is None:
            _provider = TracerProvider(resource=Resource.create({"service.name": "emu35-serve"}))
            exporter = _exporter_from_env()
            if exporter is not None:
                _provider.add_span_processor(SimpleSpanProcessor(exporter))
    return _provider.get_tracer("emu35")


def _exporter_from_env() -> SpanExporter | None:
    kind = os.environ.get("EMU35_TRACE_EXPORTER", "file" if os.environ.get("EMU35_TRACE_FILE") else "none")
    if kind == "file":
        return JsonLinesExporter(os.environ["EMU35_TRACE_FILE"])
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=os.environ.get("EMU35_OTLP_ENDPOINT"))
    return None


def start_span(name: str, metadata: Iterable[tuple[str, str]] = (), **attributes) -> trace.Span:
    """A span whose parent is the trace context found in ``metadata`` (if any). The caller
    ends it (spans here outlive a single ``with`` block: they cover whole streams)."""
    carrier = {k: v for k, v in metadata if k in ("traceparent", "tracestate")}
    parent = _PROPAGATOR.extract(carrier) if carrier else None
    return tracer().start_span(name, context=parent, attributes=attributes)


def child_metadata(span: trace.Span) -> tuple[tuple[str, str], ...]:
    """W3C headers that make the next stage's span a child of ``span``."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return tuple(carrier.items())
