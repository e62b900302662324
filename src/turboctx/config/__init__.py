"""The engine's one typed configuration: EngineConfig and its sections, the option table that
every API keyword and command-line flag is read through, and a model's architecture."""
from turboctx.config.architecture import ModelArchitecture
from turboctx.config.engine import ENGINE_OPTIONS, EngineConfig
from turboctx.config.options import OptionSpec, parse_size
from turboctx.config.sections import (AttentionConfig, CacheConfig, ModelConfig, ParallelConfig,
                                      SchedulerConfig)

__all__ = ["EngineConfig", "ENGINE_OPTIONS", "ModelConfig", "CacheConfig", "SchedulerConfig",
           "ParallelConfig", "AttentionConfig", "ModelArchitecture", "OptionSpec", "parse_size"]
