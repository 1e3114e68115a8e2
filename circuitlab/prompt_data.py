"""The one split policy: which prompts extraction, search and the final test may read.

Every stage asks here for its prompts instead of splitting them itself. A source (packaged
name, file, ``FILE:COLUMN``, ``hf:...``; see :class:`circuitlab.prompts.PromptSource`) is
cut 60 / 20 / 20 into **train** (directions are extracted from it), **search** (the
optimiser tunes on it) and **test** (scored once, after the search), shuffled with the
fixed :data:`SPLIT_SEED`, never with ``--seed``: another seed would move prompts between
splits, and a test prompt would leak into extraction or search.

With the packaged defaults (``advbench`` and ``harmless``) these are exactly the splits the
refusal organism was built from (its recipe uses the same seed and fractions): its training
prompts are the train split, and search and test never saw training. Packaged harmful sets
have JailbreakBench and StrongREJECT taken out, which stay held out as evaluation sets;
files and hub data sets are used as given.

The test split is sealed: :class:`SealedPrompts` hands its prompts out only when iterated
or indexed (after the search), and every opening is reported to :data:`TEST_READS`
listeners, which is how a test proves that no search reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

from circuitlab.errors import PromptError
from circuitlab.prompts import PromptSet, PromptSource

__all__ = [
    "DEFAULT_HARMFUL",
    "SOURCE_HELP",
    "DEFAULT_HARMLESS",
    "EVALUATION_SETS",
    "SPLIT_FRACTIONS",
    "SPLIT_SEED",
    "SPLITS",
    "SealedPrompts",
    "SidePrompts",
    "TEST_READS",
    "side_prompts",
]

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_SEED = 0
SPLITS = ("train", "search", "test")
DEFAULT_HARMFUL = "advbench"
DEFAULT_HARMLESS = "harmless"
EVALUATION_SETS = ("jailbreakbench", "strongreject")
SOURCE_HELP = (
    "a packaged name (advbench, harmless, jailbreakbench, strongreject, ...), a text file "
    "(one prompt per line), FILE.csv/.json/.jsonl:COLUMN, or hf:DATASET[:CONFIG][@SPLIT[:COLUMN]]"
)
# Called with the sealed set's name whenever a test split is opened (tests listen here).
TEST_READS: list[Callable[[str], None]] = []


class SealedPrompts(Sequence[str]):
    """A test split whose prompts come out only when used; its size is known without that.

    ``loader`` gives the prompts (a split already cut, or a separate test source read
    lazily); ``n`` caps how many are used.
    """

    def __init__(self, name: str, loader: Callable[[], Sequence[str]], n: int | None = None):
        self.name = name
        self._loader = loader
        self._n = n
        self._prompts: tuple[str, ...] | None = None

    def _open(self) -> tuple[str, ...]:
        if self._prompts is None:
            for listener in TEST_READS:
                listener(self.name)
            prompts = tuple(self._loader())
            self._prompts = prompts if self._n is None else prompts[: self._n]
        return self._prompts

    def __len__(self) -> int:
        # The count alone reveals no prompt; a lazily read source must be read for it.
        return len(self._open())

    def __getitem__(self, index):
        return self._open()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._open())

    def __bool__(self) -> bool:
        return self._n != 0

    def __repr__(self) -> str:
        return f"SealedPrompts({self.name!r})"


@dataclass(frozen=True)
class SidePrompts:
    """One side (harmful or harmless) under the split policy."""

    source: str
    train: PromptSet
    search: PromptSet
    test_set: PromptSet | None
    test_source: PromptSource | None = None

    def test(self, n: int | None = None) -> SealedPrompts:
        """The test split, sealed until used (``n``: at most this many)."""
        if self.test_source is not None:
            source = self.test_source
            return SealedPrompts(source.name, lambda: source.read().prompts, n)
        test_set = self.test_set
        return SealedPrompts(test_set.name, lambda: test_set.prompts, n)

    def split(self, name: str) -> PromptSet:
        """``train`` or ``search`` (``val`` is its older name) as a prompt set; ``test``
        opens the sealed split (for evaluation, which reads nothing else)."""
        if name in ("search", "val"):
            return self.search
        if name == "train":
            return self.train
        if name == "test":
            test = self.test()
            return PromptSet(test.name, tuple(test))
        raise PromptError(f"unknown split {name!r}; choose from train, search, test")


@cache
def _evaluation_sets() -> tuple[PromptSet, ...]:
    return tuple(PromptSource("packaged", name).read() for name in EVALUATION_SETS)


def _policy_set(source: PromptSource, harmful: bool) -> PromptSet:
    prompts = source.read()
    # Packaged harmful sets lose the evaluation sets' prompts, as the organism's data did.
    if harmful and source.kind == "packaged" and source.location not in EVALUATION_SETS:
        prompts = prompts.without(*_evaluation_sets())
    return prompts


def side_prompts(
    source: str | None, harmful: bool, test_source: str | None = None, min_size: int = 1
) -> SidePrompts:
    """Read one side and cut it by the policy; a bad source fails here, naming its file.

    Args:
        source: a prompt source (None: the packaged default of the side).
        harmful: the harmful side (packaged sets lose the evaluation sets' prompts).
        test_source: a separate test set; checked to exist now, read only when used.
        min_size: the smallest split allowed.
    """
    spec = source or (DEFAULT_HARMFUL if harmful else DEFAULT_HARMLESS)
    parsed = PromptSource.parse(spec)
    splits = _policy_set(parsed, harmful).split(SPLIT_FRACTIONS, SPLIT_SEED, min_size)
    separate = PromptSource.parse(test_source) if test_source else None
    return SidePrompts(spec, splits.train, splits.val, splits.test, separate)


def stage_prompts(source: str, split: str, n: int, harmful: bool) -> PromptSet:
    """At most ``n`` prompts of one split of a source, for a stage that reads one split
    (evaluation reads ``test``; ``all`` is the whole source, outside the policy)."""
    if split == "all":
        prompts = PromptSource.parse(source).read()
    else:
        prompts = side_prompts(source, harmful).split(split)
    return prompts.take(min(n, len(prompts)))
