"""What a SynthDG copy contains: its seed, image size, scene counts and domains, defined once."""
import dataclasses

__all__ = ["DOMAINS", "SOURCE_DOMAIN", "TARGET_DOMAINS", "SPLITS", "SynthDGSpec", "DEFAULT_SPEC"]

# The source style the demo models train on, then the shifted target styles. Every domain renders
# the same validation layouts, so the label maps are identical across domains.
SOURCE_DOMAIN = "source"
TARGET_DOMAINS = ("palette", "fog", "night", "rain", "snow")
DOMAINS = (SOURCE_DOMAIN,) + TARGET_DOMAINS
SPLITS = ("train", "val")

# Bump when a change to the generator changes its output, so that an old copy on disk is
# recognised as stale instead of being silently mixed with new code.
GENERATOR_VERSION = 2

@dataclasses.dataclass(frozen=True)
class SynthDGSpec:
    """
    The parameters that fully determine a SynthDG copy (same spec -> byte-identical files).

    Attributes:
        seed (int): master seed; every scene and every rendering draws from a generator seeded
            by (seed, split, scene index[, domain]), so scenes do not depend on each other.
        height (int): image height in pixels.
        width (int): image width in pixels.
        num_train (int): training scenes (rendered in every domain of ``train_domains``).
        num_val (int): validation scenes (rendered in every domain).
        train_domains (tuple[str]): domains whose training split is generated; the source is
            enough to train a domain-generalization model.
    """

    seed: int = 0
    height: int = 256
    width: int = 512
    num_train: int = 400
    num_val: int = 50
    train_domains: tuple = (SOURCE_DOMAIN,)

    def __post_init__(self):
        if self.height < 32 or self.width < 32:
            raise ValueError(
                f"SynthDGSpec size must be at least 32x32, got {self.height}x{self.width}"
            )
        if self.num_train < 0 or self.num_val < 0:
            raise ValueError(
                f"SynthDGSpec scene counts must be >= 0, got num_train={self.num_train}, "
                f"num_val={self.num_val}"
            )
        unknown = [d for d in self.train_domains if d not in DOMAINS]
        if unknown:
            raise ValueError(
                f"SynthDGSpec.train_domains has unknown domains {unknown}; known: {DOMAINS}"
            )

    def num_scenes(self, split):
        """Number of scenes in ``split`` ("train" or "val")."""
        return {"train": self.num_train, "val": self.num_val}[split]

    def domains(self, split):
        """Domains rendered for ``split``."""
        return tuple(self.train_domains) if split == "train" else DOMAINS

    def to_dict(self):
        """JSON-friendly form, stored in the manifest to recognise a copy made from this spec."""
        d = dataclasses.asdict(self)
        d["train_domains"] = list(self.train_domains)
        d["generator_version"] = GENERATOR_VERSION
        return d

DEFAULT_SPEC = SynthDGSpec()
