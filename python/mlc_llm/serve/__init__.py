"""The serving engine: MLCEngine, AsyncMLCEngine and their configuration."""

from .config import EngineConfig
from .engine import AsyncMLCEngine, MLCEngine
from .metrics import EngineMetrics

__all__ = ["AsyncMLCEngine", "EngineConfig", "EngineMetrics", "MLCEngine"]
