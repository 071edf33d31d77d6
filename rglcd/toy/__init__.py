"""A CPU toy world where every claim of RG-LCD can be checked (issue "Show that it works").

Coloured shapes with captions, a tiny VAE and text-conditioned teacher trained on them, a classifier
reward, and the project's own LCD/RG-LCD step, LRM, samplers and metrics run on top:
`rglcd toy run [--quick]` writes benchmarks/toy/RESULTS.md and results.json.
"""
from rglcd.toy.classifier import ToyClassifier
from rglcd.toy.reward import ToyReward
from rglcd.toy.config import ToyConfig, WorldConfig, method_config, quick_config
from rglcd.toy.data import ToyData, caption, make_dataset, parse_caption, prompt_set
from rglcd.toy.runner import Experiment, experiments, run_toy, train_student
from rglcd.toy.world import World, load_or_build_world

__all__ = ["Experiment", "ToyClassifier", "ToyConfig", "ToyData", "ToyReward", "World", "WorldConfig", "caption",
           "experiments", "load_or_build_world", "make_dataset", "method_config", "parse_caption", "prompt_set",
           "quick_config", "run_toy", "train_student"]
