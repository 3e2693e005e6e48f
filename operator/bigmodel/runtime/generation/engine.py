"""Continuous batching: sequences join the running batch at the next step and leave it when done.

Every step the engine (1) drops cancelled sequences, freeing their cache at once, (2) admits waiting ones while the
bounds allow, running each prompt through the model alone (its prefill) to get its first token and its cache, and
(3) decodes one token for every running sequence in one pass over the batch cache. A sequence of the built-in GPT that
has outgrown its context is recomputed over its last window each step, exactly as generate() does.

submit() and cancel() may be called from any thread; step() runs on one thread (EngineLoop's, or a test's).
Outputs go to each request's sink, called on the stepping thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from bigmodel.runtime.generation.batch_cache import BatchCache
from bigmodel.runtime.generation.models import Cache, CausalModel
from bigmodel.runtime.generation.sampling import Sampling, sample

# Finish reasons, as OpenAI names them.
LENGTH = "length"
STOP = "stop"
ERROR = "error"
# Prompt tokens prefilled in one step beyond the first prompt: more joiners wait a step, so that a burst of new
# requests does not stall the tokens of the running ones for long.
PREFILL_TOKENS_PER_STEP = 2048


class RequestRefused(ValueError):
    """A request the engine can never run (too long for the model or the cache); str() says which bound."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: tuple[int, ...]
    max_tokens: int
    sampling: Sampling = Sampling()


@dataclass(frozen=True)
class Output:
    """New tokens of one request; finish is set on its last output."""

    tokens: tuple[int, ...]
    finish: str | None = None
    # Set (with finish ERROR) when the model failed; the request ends there.
    error: str | None = None


Sink = Callable[[Output], None]


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    sink: Sink
    tokens: list[int]
    # Tokens of this sequence whose keys and values are in the batch cache.
    reserved: int
    generator: torch.Generator | None
    generated: int = 0
    cancelled: bool = False
    finished: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class Handle:
    """A submitted request; cancel() frees its place and cache at the engine's next step."""

    def __init__(self, sequence: _Sequence, wake: Callable[[], None]) -> None:
        self._sequence = sequence
        self._wake = wake

    def cancel(self) -> None:
        self._sequence.cancel()
        self._wake()


@dataclass
class EngineStats:
    running: int
    waiting: int
    cached_tokens: int
    reserved_tokens: int


@dataclass(frozen=True)
class Load:
    """The work an engine has taken and not yet done, as an autoscaler weighs it; load() gives it to any thread."""

    running: int
    """Sequences in the running batch."""
    waiting: int
    """Sequences submitted and not yet admitted to the batch."""
    pending_tokens: int
    """Tokens still to generate for all of them: each one's max_tokens less the tokens it has generated. Prompt tokens
    do not count, not even those of waiting sequences: a prompt is prefilled in one pass over all its tokens, which
    costs about what one decode step does, while each new token costs a step of its own; counted token for token, a
    long prompt would weigh as hundreds of steps. max_tokens is a bound (a sequence may stop early), so this errs
    towards more work, which for scaling up is the safe side."""


IDLE = Load(running=0, waiting=0, pending_tokens=0)


def _pending_tokens(sequences: Iterable[_Sequence]) -> int:
    """Of sequences that are not cancelled."""
    return sum(sequence.request.max_tokens - sequence.generated for sequence in sequences)


@dataclass
class Engine:
    model: CausalModel
    max_sequences: int
    max_cached_tokens: int
    _inbox: deque[_Sequence] = field(default_factory=deque)
    _waiting: deque[_Sequence] = field(default_factory=deque)
    # Sequences past a sliding model's context, recomputed without a cache; the others hold slots of _cache.
    _windowed: list[_Sequence] = field(default_factory=list)
    # Admitted this step and not yet in either list (a failing prefill must still end them).
    _prefilling: list[_Sequence] = field(default_factory=list)
    _cache: BatchCache[_Sequence] = field(default_factory=BatchCache)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # The running and waiting sequences as the stepping thread last saw them; load() adds the inbox to it. Only the
    # stepping thread may walk the batch (the cache and the waiting queue change under it), so it publishes this at
    # the start of a step, in the same hold of the lock that empties the inbox (a request is never in neither), and
    # again at the end.
    _published: Load = IDLE
    wake: Callable[[], None] = lambda: None

    def reservation(self, request: GenerationRequest) -> int:
        """Cache tokens a request may come to hold: its prompt and new tokens, at most a context of a sliding model."""
        return min(len(request.prompt) + request.max_tokens, self.model.max_positions)

    def check(self, request: GenerationRequest) -> None:
        """Raises RequestRefused for a request that no amount of waiting would let run."""
        if not request.prompt:
            raise RequestRefused("the prompt must hold at least one token")
        if request.max_tokens < 1:
            raise RequestRefused("max_tokens must be at least 1")
        total = len(request.prompt) + request.max_tokens
        if not self.model.slides and total > self.model.max_positions:
            raise RequestRefused(
                f"this model's maximum context length is {self.model.max_positions} tokens; the prompt "
                f"({len(request.prompt)} tokens) and max_tokens ({request.max_tokens}) come to {total}"
            )
        if self.reservation(request) > self.max_cached_tokens:
            raise RequestRefused(
                f"the prompt ({len(request.prompt)} tokens) and max_tokens ({request.max_tokens}) need "
                f"{self.reservation(request)} cache tokens; this server holds {self.max_cached_tokens} per replica"
            )

    def submit(self, request: GenerationRequest, sink: Sink) -> Handle:
        self.check(request)
        sequence = _Sequence(
            request,
            sink,
            list(request.prompt),
            self.reservation(request),
            request.sampling.generator(self.model.device),
        )
        with self._lock:
            self._inbox.append(sequence)
        self.wake()
        return Handle(sequence, self.wake)

    def stats(self) -> EngineStats:
        running = self._running()
        return EngineStats(
            running=len(running),
            waiting=len(self._waiting) + len(self._inbox),
            cached_tokens=self._cache.tokens,
            reserved_tokens=sum(sequence.reserved for sequence in running),
        )

    def load(self) -> Load:
        """The work taken and not yet done; cheap, and safe to call from any thread while the engine steps."""
        with self._lock:
            published = self._published
            inbox = [sequence for sequence in self._inbox if not sequence.cancelled]
        return Load(
            running=published.running,
            waiting=published.waiting + len(inbox),
            pending_tokens=published.pending_tokens + _pending_tokens(inbox),
        )

    def _publish(self) -> None:
        """Called with the lock held, on the stepping thread."""
        running = [sequence for sequence in self._running() if not sequence.cancelled]
        waiting = [sequence for sequence in self._waiting if not sequence.cancelled]
        self._published = Load(len(running), len(waiting), _pending_tokens(running) + _pending_tokens(waiting))

    @property
    def idle(self) -> bool:
        return not (self._inbox or self._waiting or self._running())

    def _running(self) -> list[_Sequence]:
        return [sequence for _, sequence in self._cache.held()] + self._windowed

    def step(self) -> None:
        """One iteration: drop the cancelled, admit and prefill, then decode a token for every running sequence.

        A sequence admitted now decodes in this step's pass too, so its second token is not a step behind."""
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
            self._publish()
        self._drop_cancelled()
        self._prefilling = self._admit()
        joining = [(sequence, cache) for sequence in self._prefilling if (cache := self._prefill(sequence)) is not None]
        self._prefilling = []
        # All of this step's newcomers join the batch cache in one copy.
        self._cache.add([(sequence, cache, len(sequence.tokens) - 1) for sequence, cache in joining])
        if self._cache.held():
            self._decode()
        for sequence in self._windowed:
            self._recompute(sequence)
        self._windowed = [sequence for sequence in self._windowed if not sequence.finished]
        with self._lock:
            self._publish()

    def _admit(self) -> list[_Sequence]:
        admitted: list[_Sequence] = []
        running = self._running()
        reserved = sum(sequence.reserved for sequence in running)
        prefill = 0
        while self._waiting:
            head = self._waiting[0]
            if head.cancelled:
                self._waiting.popleft()
                continue
            # First come, first served: a long request at the head is not overtaken, so it cannot starve.
            if len(running) + len(admitted) >= self.max_sequences or reserved + head.reserved > self.max_cached_tokens:
                break
            if admitted and prefill + len(head.tokens) > PREFILL_TOKENS_PER_STEP:
                break
            self._waiting.popleft()
            admitted.append(head)
            reserved += head.reserved
            prefill += len(head.tokens)
        return admitted

    def _prefill(self, sequence: _Sequence) -> Cache | None:
        """The sequence's first token; its cache when it is to join the batch cache."""
        if len(sequence.tokens) > self.model.max_positions:
            # Only a sliding model takes such a prompt (check() refuses it otherwise); its window is recomputed.
            self._windowed.append(sequence)
            return None
        logits, cache = self.model.prefill(torch.tensor([sequence.tokens], device=self.model.device))
        if self._emit(sequence, logits[0]):
            return None
        if len(sequence.tokens) > self.model.max_positions:
            self._windowed.append(sequence)
            return None
        return cache

    def _decode(self) -> None:
        """One token for each held slot: its newest token (not yet cached) goes through the model with the cache.
        Free slots ride along masked, their outputs unused, until the cache compacts them away."""
        device = self.model.device
        owners = self._cache.owners
        tokens = torch.tensor([[owner.tokens[-1] if owner else 0] for owner in owners], device=device)
        positions = torch.tensor([[length] for length in self._cache.lengths], device=device)
        key_mask = self._cache.key_mask(1)
        self._cache.reserve(1)
        logits = self.model.decode(tokens, positions, key_mask, self._cache)
        self._cache.commit(1)
        leaving: list[int] = []
        for slot, sequence in self._cache.held():
            if self._emit(sequence, logits[slot]):
                leaving.append(slot)
            elif len(sequence.tokens) > self.model.max_positions:
                # The next token's position would be past the context: from here on the window slides.
                self._windowed.append(sequence)
                leaving.append(slot)
        if leaving:
            self._cache.release(leaving)

    def _recompute(self, sequence: _Sequence) -> None:
        window = sequence.tokens[-self.model.max_positions :]
        logits, _ = self.model.prefill(torch.tensor([window], device=self.model.device))
        self._emit(sequence, logits[0])

    def _emit(self, sequence: _Sequence, logits: torch.Tensor) -> bool:
        """Samples the sequence's next token and hands it to its sink; True when the sequence is done."""
        if sequence.cancelled:
            return True
        token = sample(logits, sequence.request.sampling, sequence.generator)
        sequence.tokens.append(token)
        sequence.generated += 1
        finish = None
        if token in self.model.end_tokens:
            finish = STOP
        elif sequence.generated >= sequence.request.max_tokens:
            finish = LENGTH
        sequence.finished = finish is not None
        sequence.sink(Output((token,), finish))
        return sequence.finished

    def fail(self, reason: str) -> None:
        """Ends every request with reason (the model raised): each gets an error output, and the cache is freed."""
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
        for sequence in [*self._prefilling, *self._running(), *self._waiting]:
            if not (sequence.finished or sequence.cancelled):
                sequence.finished = True
                sequence.sink(Output((), ERROR, reason))
        self._prefilling, self._windowed, self._waiting = [], [], deque()
        self._cache = BatchCache()
        with self._lock:
            self._published = IDLE

    def _drop_cancelled(self) -> None:
        cancelled = [slot for slot, sequence in self._cache.held() if sequence.cancelled]
        if cancelled:
            self._cache.release(cancelled)
        self._windowed = [sequence for sequence in self._windowed if not sequence.cancelled]
