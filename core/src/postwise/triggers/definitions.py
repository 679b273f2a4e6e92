"""Trigger definitions: the validated shape of a trigger and its condition trees.

A definition is plain data (JSON, YAML, a dict from Python)::

    {
      "name": "cart-reminder",
      "event_type": "cart_abandoned",
      "conditions": {"all": [
          {"type": "engagement_score", "config": {"min": 10}},
          {"any": [{"type": "segment", "config": {"segment": "vip"}},
                   {"type": "event_property", "config": {"property": "total", "op": "gt",
                                                         "value": 50}}]}
      ]},
      "action": {"type": "send_template", "template": "cart-reminder"},
      "delay": "2h",
      "exit_conditions": {"type": "action_history",
                          "config": {"event_type": "purchase", "since_event": true}},
      "cooldown": "24h",
      "priority": 10
    }

:func:`validate_definition` checks everything a trigger names when it is saved — the shape, each
condition type and its configuration (through the type's own pydantic model), the template or
campaign, the segments — and raises :class:`~postwise.errors.ValidationError` whose ``field`` is
the path of the offending value, e.g. ``conditions.all[1].config.hours``.

The same module compiles condition trees into nodes the engine evaluates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from sqlmodel import Session, select

from postwise.compliance.consent import check_purpose
from postwise.db.models import Campaign, CampaignStatus, Experiment, Template
from postwise.errors import ValidationError
from postwise.triggers.conditions import (
    ConditionContext,
    ConditionType,
    Predicate,
    TriggerEvent,
    describe_error,
)

if TYPE_CHECKING:
    from postwise.registry import Registry

__all__ = [
    "DEFAULT_COOLDOWN_SECONDS",
    "ActionSpec",
    "AllOf",
    "AnyOf",
    "ConditionFailed",
    "Leaf",
    "Node",
    "Not",
    "TriggerDefinition",
    "ValidatedTrigger",
    "compile_conditions",
    "parse_duration",
    "validate_definition",
]

DEFAULT_COOLDOWN_SECONDS = 24 * 3600
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$")
_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:-]{0,199}$")
_MAX_DEPTH = 8


def parse_duration(value: int | float | str) -> int:
    """Seconds in ``value``: a number of seconds, or ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``,
    ``"1w"``."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 3600, '30m', '2h' or '1d'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. 3600, '30m', '2h' or '1d'")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("must be >= 0")
    return round(seconds)


class ActionSpec(BaseModel):
    """What a trigger does: send a template, or enrol the contact in a campaign (send it the
    campaign's message, attributed to the campaign and its experiment)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["send_template", "enrol_campaign"]
    template: int | str | None = Field(default=None, description="Template id or name.")
    template_id: int | None = None
    campaign: int | str | None = Field(default=None, description="Campaign id or name.")
    campaign_id: int | None = None
    consent_purpose: str | None = Field(
        default=None,
        description="A consent purpose (e.g. 'newsletter') the contact must have granted and "
        "confirmed for a marketing send, besides the global and regional rules.",
    )

    @model_validator(mode="after")
    def _check(self) -> ActionSpec:
        if self.type == "send_template":
            if self.template is None and self.template_id is None:
                raise ValueError("'send_template' needs 'template' (a template name or id)")
            if self.campaign is not None or self.campaign_id is not None:
                raise ValueError("'send_template' takes no campaign; use 'enrol_campaign'")
        else:
            if self.campaign is None and self.campaign_id is None:
                raise ValueError("'enrol_campaign' needs 'campaign' (a campaign name or id)")
            if self.template is not None or self.template_id is not None:
                raise ValueError("'enrol_campaign' sends the campaign's template; drop 'template'")
            if self.consent_purpose is not None:
                # One send needs one purpose: the campaign's list's, set on the list.
                raise ValueError(
                    "'enrol_campaign' sends need the consent the campaign's list requires; drop "
                    "'consent_purpose' and set it on the list (postwise segments consent)"
                )
        return self


class TriggerDefinition(BaseModel):
    """The shape of a trigger definition (condition trees are checked against the registry by
    :func:`validate_definition`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    event_type: str = Field(min_length=1, max_length=200)
    conditions: dict[str, Any] | list[Any] = Field(default_factory=dict)
    action: ActionSpec
    delay: int | float | str = 0
    cooldown: int | float | str = DEFAULT_COOLDOWN_SECONDS
    priority: int = Field(default=0, ge=-1000, le=1000)
    active: bool = True
    exit_conditions: dict[str, Any] | list[Any] | None = None
    transactional: bool | None = Field(
        default=None,
        description="Exempt from the frequency cap and quiet hours. Delivery decides by the "
        "template's kind, so this must match it; left out, it is taken from the template.",
    )
    experiment_id: int | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                "must start with a letter or digit and use letters, digits, spaces, '_', '.', "
                "':' or '-'"
            )
        return value

    @field_validator("delay", "cooldown")
    @classmethod
    def _check_duration(cls, value: int | float | str) -> int:
        return parse_duration(value)

    @classmethod
    def from_raw(cls, data: Mapping[str, Any]) -> TriggerDefinition:
        """Validate raw data; the error names the first offending field."""
        if not isinstance(data, Mapping):
            raise ValidationError("a trigger definition must be a JSON object")
        try:
            return cls.model_validate(dict(data))
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            raise ValidationError(describe_error(first), field=_path(first["loc"])) from None

    @property
    def delay_seconds(self) -> int:
        return int(self.delay)

    @property
    def cooldown_seconds(self) -> int:
        return int(self.cooldown)


def _path(loc: Sequence[int | str], prefix: str = "") -> str | None:
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or None


class ConditionFailed(Exception):
    """A condition raised while being evaluated; carries the leaf so the plugin can be named."""

    def __init__(self, leaf: Leaf, error: Exception) -> None:
        super().__init__(f"condition {leaf.condition.name!r} at {leaf.path} raised {error!r}")
        self.leaf = leaf
        self.error = error


class Node:
    """A compiled condition tree node."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def evaluate(self, event: TriggerEvent, context: ConditionContext) -> bool:
        """Whether the event satisfies this node; a raising condition becomes ConditionFailed."""
        raise NotImplementedError

    def blocker(self, event: TriggerEvent, context: ConditionContext) -> Node | None:
        """The node that made this subtree false (None when it is true), for explanations."""
        raise NotImplementedError

    def explain(self) -> str:
        raise NotImplementedError

    def leaves(self) -> list[Leaf]:
        raise NotImplementedError

    @property
    def cost(self) -> int:
        """How expensive evaluating this node may be (0: the event alone; 3: a batch query)."""
        raise NotImplementedError


#: Evaluation cost of what a condition requires; conditions are evaluated cheapest first.
_COSTS = {"contact": 1, "engagement": 1, "segments": 3, "history": 3}


class Leaf(Node):
    """One configured condition."""

    __slots__ = ("condition", "config", "plugin", "predicate")

    def __init__(
        self, path: str, condition: ConditionType[Any], config: BaseModel, plugin: str
    ) -> None:
        super().__init__(path)
        self.condition = condition
        self.config = config
        self.plugin = plugin
        self.predicate = condition.bind(config)

    def evaluate(self, event: TriggerEvent, context: ConditionContext) -> bool:
        try:
            return bool(self.predicate(event, context))
        except Exception as exc:
            raise ConditionFailed(self, exc) from exc

    def blocker(self, event: TriggerEvent, context: ConditionContext) -> Node | None:
        return None if self.evaluate(event, context) else self

    def explain(self) -> str:
        return self.condition.explain(self.config)

    def leaves(self) -> list[Leaf]:
        return [self]

    @property
    def cost(self) -> int:
        return max((_COSTS.get(r, 2) for r in self.condition.requires), default=0)


class AllOf(Node):
    """True when every child is. Children are evaluated cheapest first (conditions are pure, so
    the order changes only the cost); explanations follow the written order."""

    __slots__ = ("_calls", "children")

    def __init__(self, path: str, children: list[Node]) -> None:
        super().__init__(path)
        self.children = children
        # Leaves are called through their predicate directly, and a failure is attributed here:
        # one Python frame less per condition on the engine's hottest path.
        self._calls: list[tuple[Node, Predicate]] = [
            (child, child.predicate if isinstance(child, Leaf) else child.evaluate)
            for child in sorted(children, key=lambda child: child.cost)
        ]

    def evaluate(self, event: TriggerEvent, context: ConditionContext) -> bool:
        node: Node = self
        try:
            for node, call in self._calls:  # noqa: B007 (the except clause reads node)
                if not call(event, context):
                    return False
        except ConditionFailed:
            raise
        except Exception as exc:
            assert isinstance(node, Leaf)
            raise ConditionFailed(node, exc) from exc
        return True

    def blocker(self, event: TriggerEvent, context: ConditionContext) -> Node | None:
        for child in self.children:
            found = child.blocker(event, context)
            if found is not None:
                return found
        return None

    def explain(self) -> str:
        if not self.children:
            return "always"
        return "all of (" + "; ".join(child.explain() for child in self.children) + ")"

    def leaves(self) -> list[Leaf]:
        return [leaf for child in self.children for leaf in child.leaves()]

    @property
    def cost(self) -> int:
        return max((child.cost for child in self.children), default=0)


class AnyOf(AllOf):
    __slots__ = ()

    def evaluate(self, event: TriggerEvent, context: ConditionContext) -> bool:
        node: Node = self
        try:
            for node, call in self._calls:  # noqa: B007 (the except clause reads node)
                if call(event, context):
                    return True
        except ConditionFailed:
            raise
        except Exception as exc:
            assert isinstance(node, Leaf)
            raise ConditionFailed(node, exc) from exc
        return False

    def blocker(self, event: TriggerEvent, context: ConditionContext) -> Node | None:
        return None if self.evaluate(event, context) else self

    def explain(self) -> str:
        return "any of (" + "; ".join(child.explain() for child in self.children) + ")"


class Not(Node):
    __slots__ = ("child",)

    def __init__(self, path: str, child: Node) -> None:
        super().__init__(path)
        self.child = child

    def evaluate(self, event: TriggerEvent, context: ConditionContext) -> bool:
        return not self.child.evaluate(event, context)

    def blocker(self, event: TriggerEvent, context: ConditionContext) -> Node | None:
        return None if self.evaluate(event, context) else self

    def explain(self) -> str:
        return f"not ({self.child.explain()})"

    def leaves(self) -> list[Leaf]:
        return self.child.leaves()

    @property
    def cost(self) -> int:
        return self.child.cost


def compile_conditions(
    raw: Mapping[str, Any] | Sequence[Any] | None,
    registry: Registry[ConditionType[Any]],
    *,
    field: str = "conditions",
    session: Session | None = None,
) -> AllOf:
    """Compile a condition tree; errors name the path (``conditions.all[1].config.hours``).

    Accepted nodes: ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": node}`` and a condition
    ``{"type": NAME, "config": {...}}``. An empty tree (``{}``) always matches; a list at the top
    is read as ``all``. With ``session``, conditions also check what they reference exists.
    """
    if raw is None or (isinstance(raw, Mapping) and not raw):
        return AllOf(field, [])
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        raw = {"all": list(raw)}
    node = _compile(raw, registry, field, session, 0)
    return node if isinstance(node, AllOf) and type(node) is AllOf else AllOf(field, [node])


def _compile(
    raw: Any,
    registry: Registry[ConditionType[Any]],
    path: str,
    session: Session | None,
    depth: int,
) -> Node:
    if depth > _MAX_DEPTH:
        raise ValidationError(f"conditions nest deeper than {_MAX_DEPTH} levels", field=path)
    if not isinstance(raw, Mapping):
        raise ValidationError(
            'must be an object: {"all": [...]}, {"any": [...]}, {"not": {...}} or '
            '{"type": ..., "config": {...}}',
            field=path,
        )
    keys = set(raw)
    for combinator, cls in (("all", AllOf), ("any", AnyOf)):
        if combinator in raw:
            if keys != {combinator}:
                raise ValidationError(
                    f"a {combinator!r} node takes no other keys (found "
                    f"{', '.join(sorted(keys - {combinator}))})",
                    field=path,
                )
            items = raw[combinator]
            if not isinstance(items, list):
                raise ValidationError("must be a list of conditions", field=f"{path}.{combinator}")
            if combinator == "any" and not items:
                raise ValidationError("must hold at least one condition", field=f"{path}.any")
            children = [
                _compile(item, registry, f"{path}.{combinator}[{index}]", session, depth + 1)
                for index, item in enumerate(items)
            ]
            return cls(path, children)
    if "not" in raw:
        if keys != {"not"}:
            raise ValidationError("a 'not' node takes no other keys", field=path)
        return Not(path, _compile(raw["not"], registry, f"{path}.not", session, depth + 1))
    if "type" not in raw:
        raise ValidationError(
            "needs 'type' (a condition type) or one of 'all', 'any', 'not'", field=path
        )
    unknown = keys - {"type", "config"}
    if unknown:
        raise ValidationError(
            f"unknown key(s) {', '.join(sorted(unknown))}; a condition has 'type' and 'config'",
            field=path,
        )
    name = raw["type"]
    if not isinstance(name, str) or name not in registry:
        installed = ", ".join(registry.names()) or "none"
        raise ValidationError(
            f"unknown condition type {name!r}; installed condition types: {installed}",
            field=f"{path}.type",
        )
    entry = registry.entry(name)
    raw_config = raw.get("config") or {}
    if not isinstance(raw_config, Mapping):
        raise ValidationError("must be an object", field=f"{path}.config")
    config_path = f"{path}.config"
    try:
        config = entry.component.parse_config(raw_config)
        if session is not None:
            entry.component.check_references(config, session)
    except ValidationError as exc:
        message = str(exc)
        if exc.field and message.startswith(f"{exc.field}: "):
            message = message[len(exc.field) + 2 :]
        field = f"{config_path}.{exc.field}" if exc.field else config_path
        raise ValidationError(message, field=field) from None
    try:
        return Leaf(path, entry.component, config, entry.plugin)
    except Exception as exc:  # a plugin's bind() is third-party code
        raise ValidationError(
            f"condition {name!r} (plugin {entry.plugin!r}) could not prepare this configuration: "
            f"{type(exc).__name__}: {exc}",
            field=config_path,
        ) from None


@dataclass(frozen=True, slots=True)
class ValidatedTrigger:
    """A definition checked against the registry and the database, ready to store."""

    definition: TriggerDefinition
    action: dict[str, Any]
    conditions: dict[str, Any]
    exit_conditions: dict[str, Any]
    transactional: bool


def _normalise_tree(raw: Mapping[str, Any] | Sequence[Any] | None) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    return {"all": list(raw)}


def validate_definition(
    data: Mapping[str, Any] | TriggerDefinition,
    *,
    registry: Registry[ConditionType[Any]],
    session: Session,
) -> ValidatedTrigger:
    """Check a definition completely: shape, conditions, exit conditions, template, campaign.

    Raises :class:`~postwise.errors.ValidationError` naming the field.
    """

    definition = data if isinstance(data, TriggerDefinition) else TriggerDefinition.from_raw(data)
    compile_conditions(definition.conditions, registry, session=session)
    if definition.exit_conditions:
        if definition.delay_seconds == 0:
            raise ValidationError(
                "exit conditions apply to delayed sends only; set 'delay' (e.g. '2h') or drop them",
                field="exit_conditions",
            )
        compile_conditions(
            definition.exit_conditions, registry, field="exit_conditions", session=session
        )
    spec = definition.action
    action: dict[str, Any] = {"type": spec.type}
    if spec.type == "send_template":
        ref = spec.template_id if spec.template_id is not None else spec.template
        field = "action.template_id" if spec.template_id is not None else "action.template"
        template = _find(session, Template, ref)
        if template is None:
            raise ValidationError(
                f"no template {ref!r}; create it first (postwise templates create) or fix the "
                "name or id",
                field=field,
            )
        action["template_id"] = template.id
        kind = template.kind
    else:
        ref = spec.campaign_id if spec.campaign_id is not None else spec.campaign
        field = "action.campaign_id" if spec.campaign_id is not None else "action.campaign"
        campaigns = _find_all(session, Campaign, ref)
        if not campaigns:
            raise ValidationError(f"no campaign {ref!r}; check the name or id", field=field)
        if len(campaigns) > 1:
            raise ValidationError(
                f"{len(campaigns)} campaigns are called {ref!r}; give the campaign id instead",
                field=field,
            )
        campaign = campaigns[0]
        if campaign.status == CampaignStatus.CANCELLED:
            raise ValidationError(f"campaign {ref!r} is cancelled", field=field)
        action["campaign_id"] = campaign.id
        template = session.get(Template, campaign.template_id)
        kind = template.kind if template is not None else "marketing"
    transactional = kind == "transactional"
    if spec.consent_purpose is not None:
        if transactional:
            raise ValidationError(
                "transactional sends need no consent; drop 'consent_purpose' or use a marketing "
                "template",
                field="action.consent_purpose",
            )
        action["consent_purpose"] = check_purpose(
            spec.consent_purpose, field="action.consent_purpose"
        )
    if definition.transactional is not None and definition.transactional != transactional:
        raise ValidationError(
            f"the template is {kind}, and delivery treats a send by its template's kind; "
            f"{'use a transactional template' if definition.transactional else 'drop the flag'} "
            "or leave 'transactional' out",
            field="transactional",
        )
    if (
        definition.experiment_id is not None
        and session.get(Experiment, definition.experiment_id) is None
    ):
        raise ValidationError(
            f"no experiment with id {definition.experiment_id}", field="experiment_id"
        )
    return ValidatedTrigger(
        definition=definition,
        action=action,
        conditions=_normalise_tree(definition.conditions),
        exit_conditions=_normalise_tree(definition.exit_conditions),
        transactional=transactional,
    )


def _find(session: Session, model: Any, ref: int | str | None) -> Any:
    found = _find_all(session, model, ref)
    return found[0] if len(found) == 1 else None


def _find_all(session: Session, model: Any, ref: int | str | None) -> list[Any]:
    if ref is None:
        return []
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        row = session.get(model, int(ref))
        if row is not None:
            return [row]
        if isinstance(ref, int):
            return []
    return list(session.exec(select(model).where(model.name == ref)).all())
