"""Training: the vision trainer and the model-agnostic machinery the language-model trainer shares.

Model-agnostic (reuse these):
    config        dataclass configs: argparse flags + --set + YAML layers, type checks, saved config.yaml
    checkpoint    crash-safe safetensors + JSON-manifest checkpoints, RNG capture/restore, verification
    distributed   torchrun setup (DistInfo, init/cleanup, DDP wrap, collectives, seeding)
    logging       tqdm progress, JSONL metrics (resume-aware), PNG plots
    guard         non-finite update guard (skip, stop after K in a row)
    recalibrate   BatchNorm/RepBN statistics refresh with frozen weights
Vision:
    recipes (TrainConfig, REFERENCE §4 defaults), data (digits, synthetic, ImageFolder, samplers),
    vision (train_vision), evaluate, model_files (self-describing weights, load_model), ablation, demo.

Nothing is imported here (torch stays unimported until a submodule is used).
"""
