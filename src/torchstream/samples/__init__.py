"""Complete, runnable pipelines bundled with torchstream (``torchstream run faces -i INPUT``).

Each sample is a package exposing a frozen ``Options`` dataclass (its fields become
``--option-name`` flags) and ``build(config, options) -> PipelineSpec``: the same contract as
a user's own pipeline file, so a sample is also a worked example of writing one.
"""
