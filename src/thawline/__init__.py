"""thawline: freeze, cache and thaw pretrained backbones for transfer learning."""

__version__ = "0.1.0"
