"""Journey definitions: the validated shape of a flow, and the checks made when it is saved.

A journey is plain data (JSON or YAML)::

    {
      "name": "abandoned-cart",
      "entry": {"event": "cart_abandoned",
                "conditions": [{"type": "event_property",
                                "config": {"property": "total", "op": "gte", "value": 20}}]},
      "reentry": {"every": "7d"},
      "goal": {"event": "purchase"},
      "quiet_hours": "21-8",
      "steps": [
        {"id": "wait", "type": "wait", "duration": "1h", "next": "reminder"},
        {"id": "reminder", "type": "send", "template": "cart-reminder", "next": "bought"},
        {"id": "bought", "type": "wait", "for_event": {"type": "purchase"}, "timeout": "2d",
         "next": "thanks", "timeout_next": "vip?"},
        {"id": "vip?", "type": "branch",
         "conditions": [{"type": "segment", "config": {"segment": "vip"}}],
         "then": "coupon", "else": "end"},
        {"id": "coupon", "type": "send", "template": "cart-coupon"},
        {"id": "thanks", "type": "update_contact", "add_tags": ["recovered-cart"]},
        {"id": "end", "type": "exit"}
      ]
    }

The first step is where contacts start (or ``start``). A step without ``next`` ends the journey
("completed"). :func:`validate_journey` checks the shape, every reference (templates, segments,
condition types and their configurations), that every step can be reached from the start, and
that no cycle lacks a wait (a loop that would send or branch forever without time passing); its
:class:`~postwise.errors.ValidationError` names the offending field, e.g.
``steps[3].then: no step 'cupon'``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from sqlmodel import Session, col, select

from postwise.db.models import Experiment, Segment, Template
from postwise.errors import ValidationError
from postwise.triggers.conditions import describe_error
from postwise.triggers.definitions import AllOf, compile_conditions, parse_duration
from postwise.triggers.quiet_hours import QuietHours

if TYPE_CHECKING:
    from postwise.registry import Registry
    from postwise.triggers.conditions import ConditionType

__all__ = [
    "DATE_ENTRY_EVENT",
    "SCHEDULE_ENTRY_EVENT",
    "SEGMENT_ENTRY_EVENT",
    "BestHour",
    "BranchStep",
    "CompiledJourney",
    "DateEntry",
    "EntrySpec",
    "ExitStep",
    "JourneyDefinition",
    "ScheduleEntry",
    "SegmentEntry",
    "SendStep",
    "SplitStep",
    "Step",
    "UpdateContactStep",
    "WaitStep",
    "WebhookStep",
    "compile_journey",
    "validate_journey",
]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:?!-]{0,99}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:-]{0,199}$")
_LOCAL_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
Conditions = dict[str, Any] | list[Any]


def _check_local_time(value: str) -> str:
    if not _LOCAL_TIME_RE.match(value):
        raise ValueError("must be HH:MM (00:00-23:59)")
    return value


#: A time of day, ``HH:MM``.
LocalTime = Annotated[str, AfterValidator(_check_local_time)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _duration(value: Any) -> int:
    return parse_duration(value)


class _StepBase(_Model):
    id: str = Field(min_length=1, max_length=100)
    next: str | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError("must start with a letter or digit; letters, digits, ' _.:?!-'")
        return value

    def edges(self) -> list[tuple[str, str]]:
        """``(field, target)`` for every step this one can go to."""
        return [("next", self.next)] if self.next else []


class EventMatch(_Model):
    """An event of ``type`` whose properties satisfy ``conditions`` (judged on that event)."""

    type: str = Field(min_length=1, max_length=100)
    conditions: Conditions = Field(default_factory=dict)


class BestHour(_Model):
    """Send-time optimisation: wait until the hour of day (the contact's clock) at which the
    contact opened and clicked most in the last ``window_days`` (machine opens and scanner
    clicks left out); with fewer than ``min_events`` of them, until ``fallback``."""

    fallback: LocalTime = "10:00"
    window_days: int = Field(default=90, ge=1, le=730)
    min_events: int = Field(default=3, ge=1, le=100)


class WaitStep(_StepBase):
    """Wait a duration, until a local time of day (the contact's zone), until the contact's
    most engaged hour, or for an event."""

    type: Literal["wait"]
    duration: int | float | str | None = None
    until_local_time: LocalTime | None = Field(
        default=None, description="HH:MM in the contact's zone"
    )
    until_best_hour: BestHour | None = None
    for_event: EventMatch | None = None
    timeout: int | float | str | None = None
    timeout_next: str | None = None

    @model_validator(mode="after")
    def _check(self) -> WaitStep:
        kinds = [
            self.duration is not None,
            self.until_local_time is not None,
            self.until_best_hour is not None,
            self.for_event,
        ]
        if sum(bool(k) for k in kinds) != 1:
            raise ValueError(
                "set exactly one of 'duration', 'until_local_time', 'until_best_hour', 'for_event'"
            )
        if self.duration is not None:
            self.duration = _duration(self.duration)
            if not self.duration:
                raise ValueError("'duration' must be > 0")
        if self.for_event is not None:
            if self.timeout is None:
                raise ValueError("waiting 'for_event' needs a 'timeout' (e.g. '2d')")
            self.timeout = _duration(self.timeout)
            if not self.timeout:
                raise ValueError("'timeout' must be > 0")
        elif self.timeout is not None or self.timeout_next is not None:
            raise ValueError("'timeout' and 'timeout_next' only go with 'for_event'")
        return self

    def edges(self) -> list[tuple[str, str]]:
        found = super().edges()
        if self.timeout_next:
            found.append(("timeout_next", self.timeout_next))
        return found


class SendStep(_StepBase):
    type: Literal["send"]
    template: int | str
    consent_purpose: str | None = None
    #: Send through an experiment's variants (and its holdout): delivery's experiment gate
    #: assigns each contact an arm, as for campaigns and triggers.
    experiment_id: int | None = None
    #: Send even inside the journey's quiet hours (e.g. a receipt).
    ignore_quiet_hours: bool = False


class BranchStep(_StepBase):
    """Go to ``then`` if the conditions hold (judged on the entry event, as of now), else
    ``else``."""

    type: Literal["branch"]
    conditions: Conditions
    then: str
    else_: str | None = Field(default=None, alias="else")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def edges(self) -> list[tuple[str, str]]:
        found = [("then", self.then)]
        if self.else_:
            found.append(("else", self.else_))
        return found


class SplitPath(_Model):
    weight: float = Field(gt=0)
    next: str
    name: str | None = Field(default=None, max_length=100)


class SplitStep(_StepBase):
    """A random split: each run takes one path, with probability proportional to its weight,
    chosen by a hash of the run (stable across replays)."""

    type: Literal["split"]
    paths: list[SplitPath] = Field(min_length=2, max_length=20)

    def edges(self) -> list[tuple[str, str]]:
        return [(f"paths[{i}].next", p.next) for i, p in enumerate(self.paths)]


class UpdateContactStep(_StepBase):
    type: Literal["update_contact"]
    set: dict[str, Any] = Field(default_factory=dict, description="attributes to set")
    unset: list[str] = Field(default_factory=list)
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> UpdateContactStep:
        if not (self.set or self.unset or self.add_tags or self.remove_tags):
            raise ValueError("set at least one of 'set', 'unset', 'add_tags', 'remove_tags'")
        return self


class WebhookStep(_StepBase):
    """POST the run (journey, step, contact id, entry event) to ``url``, signed with HMAC-SHA256
    of the body under the secret ``secret_env`` names; retried with backoff, then
    ``on_failure`` (or the journey ends with reason ``webhook_failed``)."""

    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://", max_length=2000)
    secret_env: str | None = Field(default=None, max_length=200)
    timeout: float = Field(default=5.0, gt=0, le=30)
    attempts: int = Field(default=5, ge=1, le=20)
    on_failure: str | None = None

    def edges(self) -> list[tuple[str, str]]:
        found = super().edges()
        if self.on_failure:
            found.append(("on_failure", self.on_failure))
        return found


class ExitStep(_StepBase):
    type: Literal["exit"]
    reason: str = Field(default="exit_step", max_length=50)


Step = Annotated[
    WaitStep | SendStep | BranchStep | SplitStep | UpdateContactStep | WebhookStep | ExitStep,
    Field(discriminator="type"),
]


class DateEntry(_Model):
    """Enter on a date held in a contact attribute (``"1990-12-07"``, ISO), ``offset_days``
    before (negative) or after it, at ``at`` on the contact's clock; ``yearly`` compares the
    month and day only (birthdays, anniversaries; 29 February counts on 28 February in other
    years)."""

    attribute: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    offset_days: int = Field(default=0, ge=-366, le=366)
    at: LocalTime = "09:00"
    yearly: bool = False


class ScheduleEntry(_Model):
    """Enter every active contact (who passes the entry conditions) at ``at`` in ``timezone``
    on each of ``days_of_week`` (every day when omitted)."""

    at: LocalTime = "09:00"
    timezone: str = "UTC"
    days_of_week: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(
        default=None, min_length=1
    )

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value


class SegmentEntry(_Model):
    """Enter when a contact joins (``on: enter``) or leaves (``on: leave``) a segment, as seen
    by a sweep every ``every`` (default 5 minutes)."""

    name: str = Field(min_length=1, max_length=200)
    on: Literal["enter", "leave"] = "enter"
    every: int | float | str = 300

    @field_validator("every")
    @classmethod
    def _check_every(cls, value: int | float | str) -> int:
        seconds = parse_duration(value)
        if seconds < 60:
            raise ValueError("must be at least 60 seconds")
        return seconds


#: The event type of the made-up entry events of date, schedule and segment entries.
DATE_ENTRY_EVENT = "journey.date"
SCHEDULE_ENTRY_EVENT = "journey.schedule"
SEGMENT_ENTRY_EVENT = "journey.segment"


class EntrySpec(_Model):
    """What starts the journey: an event of a type, a date in a contact attribute, or a
    recurring schedule; ``conditions`` are judged on the (made-up, for dates and schedules)
    entry event and the contact."""

    event: str | None = Field(default=None, min_length=1, max_length=100)
    date_attribute: DateEntry | None = None
    schedule: ScheduleEntry | None = None
    segment: SegmentEntry | None = None
    conditions: Conditions = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> EntrySpec:
        kinds = (self.event, self.date_attribute, self.schedule, self.segment)
        if sum(x is not None for x in kinds) != 1:
            raise ValueError("set exactly one of 'event', 'date_attribute', 'schedule', 'segment'")
        return self

    @property
    def event_type(self) -> str:
        """The type of the entry events (made-up ones for dates, schedules and segments)."""
        if self.event is not None:
            return self.event
        if self.date_attribute is not None:
            return DATE_ENTRY_EVENT
        return SEGMENT_ENTRY_EVENT if self.segment is not None else SCHEDULE_ENTRY_EVENT


class GoalSpec(_Model):
    """The conversion: an event that ends the journey for the contact ("converted")."""

    event: str = Field(min_length=1, max_length=100)
    conditions: Conditions = Field(default_factory=dict)


class JourneyDefinition(_Model):
    name: str = Field(min_length=1, max_length=200)
    entry: EntrySpec
    steps: list[Step] = Field(min_length=1, max_length=200)
    start: str | None = None
    #: ``"once"``, ``"always"`` (but never twice at once), or ``{"every": "30d"}``.
    reentry: Literal["once", "always"] | dict[str, Any] = "once"
    goal: GoalSpec | None = None
    #: Exit when any of these events happens (besides the goal), e.g. an unsubscribe.
    exit_on: list[EventMatch] = Field(default_factory=list)
    quiet_hours: str | None = None
    priority: int = Field(default=0, ge=-1000, le=1000)
    active: bool = True

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must start with a letter or digit; letters, digits, ' _.:-'")
        return value

    @field_validator("reentry")
    @classmethod
    def _check_reentry(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) != {"every"}:
                raise ValueError("must be 'once', 'always' or {'every': DURATION}")
            seconds = parse_duration(value["every"])
            if not seconds:
                raise ValueError("'every' must be > 0")
            return {"every": seconds}
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _check_quiet(cls, value: str | None) -> str | None:
        if value is not None:
            QuietHours.parse(value)
        return value

    @property
    def reentry_seconds(self) -> int | None:
        """None: never again ("once"); 0: whenever not inside; else the minimum gap."""
        if self.reentry == "once":
            return None
        if self.reentry == "always":
            return 0
        assert isinstance(self.reentry, dict)
        return int(self.reentry["every"])

    @property
    def start_step(self) -> str:
        return self.start or self.steps[0].id


@dataclass(slots=True)
class CompiledJourney:
    """A definition ready to run: steps by id, compiled condition trees, resolved templates."""

    id: int
    version: int
    definition: JourneyDefinition
    steps: dict[str, Any]
    entry_conditions: AllOf
    goal_conditions: AllOf | None
    exit_conditions: list[tuple[str, AllOf]]
    branch_conditions: dict[str, AllOf]
    wait_conditions: dict[str, AllOf]
    templates: dict[str, int]
    quiet: QuietHours | None
    active: bool = True
    error: str | None = None

    @property
    def name(self) -> str:
        return self.definition.name


def _path(loc: Sequence[int | str]) -> str | None:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("wait", "send", "branch", "split", "update_contact", "webhook", "exit"):
            continue  # the discriminator's own level
        else:
            text += f".{part}" if text else str(part)
    return text or None


def parse_journey(data: Mapping[str, Any]) -> JourneyDefinition:
    """The definition's shape; the error names the first offending field."""
    if not isinstance(data, Mapping):
        raise ValidationError("a journey definition must be a JSON object")
    try:
        return JourneyDefinition.model_validate(dict(data))
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        raise ValidationError(describe_error(first), field=_path(first["loc"])) from None


def _check_graph(definition: JourneyDefinition) -> None:
    index = {step.id: i for i, step in enumerate(definition.steps)}
    if len(index) != len(definition.steps):
        seen: set[str] = set()
        for i, step in enumerate(definition.steps):
            if step.id in seen:
                raise ValidationError(f"two steps are called {step.id!r}", field=f"steps[{i}].id")
            seen.add(step.id)
    if definition.start is not None and definition.start not in index:
        raise ValidationError(f"no step {definition.start!r}", field="start")
    for i, step in enumerate(definition.steps):
        for name, target in step.edges():
            if target not in index:
                raise ValidationError(
                    f"no step {target!r}; steps are {', '.join(sorted(index))}",
                    field=f"steps[{i}].{name}",
                )
    steps = {step.id: step for step in definition.steps}
    reached: set[str] = set()
    todo = [definition.start_step]
    while todo:
        current = todo.pop()
        if current in reached:
            continue
        reached.add(current)
        todo.extend(target for _, target in steps[current].edges())
    for i, step in enumerate(definition.steps):
        if step.id not in reached:
            raise ValidationError(
                f"step {step.id!r} cannot be reached from the start ({definition.start_step!r}); "
                "link it from another step or remove it",
                field=f"steps[{i}]",
            )
    # A cycle must pass through a wait: otherwise a contact would loop without time passing.
    instant = {
        step.id: [t for _, t in step.edges()]
        for step in definition.steps
        if not isinstance(step, WaitStep)
    }
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        trail.append(node)
        for target in instant.get(node, []):
            if target not in instant:
                continue
            if state.get(target) == 1:
                loop = [*trail[trail.index(target) :], target]
                raise ValidationError(
                    "this cycle has no wait step, so a contact would go round it without end: "
                    + " -> ".join(loop)
                    + "; put a wait step in it",
                    field=f"steps[{index[node]}]",
                )
            if state.get(target) is None:
                visit(target)
        trail.pop()
        state[node] = 2

    for node in instant:
        if state.get(node) is None:
            visit(node)


def compile_journey(
    definition: JourneyDefinition,
    registry: Registry[ConditionType[Any]],
    *,
    journey_id: int = 0,
    version: int = 0,
    session: Session | None = None,
) -> CompiledJourney:
    """Check and compile a definition. With ``session``, templates and segments must exist."""
    _check_graph(definition)
    if definition.entry.segment is not None and session is not None:
        name = definition.entry.segment.name
        if session.exec(select(Segment.id).where(Segment.name == name)).first() is None:
            raise ValidationError(
                f"no segment is called {name!r}; create it first (postwise segments create)",
                field="entry.segment.name",
            )
    entry = compile_conditions(
        definition.entry.conditions, registry, field="entry.conditions", session=session
    )
    goal = None
    if definition.goal is not None:
        goal = compile_conditions(
            definition.goal.conditions, registry, field="goal.conditions", session=session
        )
    exits = [
        (
            match.type,
            compile_conditions(
                match.conditions, registry, field=f"exit_on[{i}].conditions", session=session
            ),
        )
        for i, match in enumerate(definition.exit_on)
    ]
    branches: dict[str, AllOf] = {}
    waits: dict[str, AllOf] = {}
    templates: dict[str, int] = {}
    for i, step in enumerate(definition.steps):
        if isinstance(step, BranchStep):
            branches[step.id] = compile_conditions(
                step.conditions, registry, field=f"steps[{i}].conditions", session=session
            )
        elif isinstance(step, WaitStep) and step.for_event is not None:
            waits[step.id] = compile_conditions(
                step.for_event.conditions,
                registry,
                field=f"steps[{i}].for_event.conditions",
                session=session,
            )
        elif isinstance(step, SendStep) and session is not None:
            templates[step.id] = _template_id(session, step.template, f"steps[{i}].template")
            if (
                step.experiment_id is not None
                and session.get(Experiment, step.experiment_id) is None
            ):
                raise ValidationError(
                    f"no experiment with id {step.experiment_id}",
                    field=f"steps[{i}].experiment_id",
                )
        elif isinstance(step, SendStep) and isinstance(step.template, int):
            templates[step.id] = step.template
    return CompiledJourney(
        id=journey_id,
        version=version,
        definition=definition,
        steps={step.id: step for step in definition.steps},
        entry_conditions=entry,
        goal_conditions=goal,
        exit_conditions=exits,
        branch_conditions=branches,
        wait_conditions=waits,
        templates=templates,
        quiet=QuietHours.parse(definition.quiet_hours) if definition.quiet_hours else None,
        active=definition.active,
    )


def _template_id(session: Session, ref: int | str, field: str) -> int:
    query = select(Template.id)
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        query = query.where(col(Template.id) == int(ref))
    else:
        query = query.where(col(Template.name) == ref)
    found = session.exec(query).first()
    if found is None:
        raise ValidationError(
            f"no template {ref!r}; create it first (postwise templates create) or fix the name",
            field=field,
        )
    return int(found)


def validate_journey(
    data: Mapping[str, Any],
    registry: Registry[ConditionType[Any]],
    session: Session | None = None,
) -> JourneyDefinition:
    """Parse and check a definition (everything it names, with ``session``); returns it with
    templates resolved to ids, so the stored definition no longer depends on names."""
    definition = parse_journey(data)
    compiled = compile_journey(definition, registry, session=session)
    for step in definition.steps:
        if isinstance(step, SendStep) and step.id in compiled.templates:
            step.template = compiled.templates[step.id]
    return definition
