"""usm SDK for pipeline steps written in Python and built with componentize-py.

Subclass `Step`, set `name`, `version`, `hooks` (and `config_schema` when the step takes a
config), implement `run(self, input)`, and export the class the `usm:plugin/step` world needs
with `WitWorld = MyStep.export()`. `run` gets an `Input` whose record, config, actor and
context are already parsed from JSON, and returns `proceed()`, `patch()`, `set_fields()`,
`reject()` or `effects()`. Any exception it raises fails the write with the exception's
message, as an error returned from the step.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


class Input:
    """One call of the step, with the JSON members parsed."""

    def __init__(self, raw):
        self.hook = raw.hook.name.lower()
        self.phase = raw.phase.name.lower()
        self.record = json.loads(raw.record)
        self.previous = None if raw.previous is None else json.loads(raw.previous)
        self.actor = json.loads(raw.actor)
        self.context = json.loads(raw.context)
        self.config = json.loads(raw.config)

    def field(self, name):
        """The record's field `name`, or None."""
        fields = self.record.get("fields")
        return fields.get(name) if isinstance(fields, dict) else None

    def field_str(self, name):
        """The record's field `name` when it is a string, or None."""
        value = self.field(name)
        return value if isinstance(value, str) else None


def proceed():
    """Go on unchanged."""
    return types.Output_Proceed()


def patch(merge_patch):
    """Go on with this JSON merge patch of `title`, `fields` and `links`."""
    return types.Output_Patch(json.dumps(merge_patch))


def set_fields(fields):
    """Go on with these fields set (a patch of `fields` only)."""
    return patch({"fields": fields})


def reject(code, message):
    """Refuse the write: the client gets 422 naming the module, the step and `code`."""
    return types.Output_Reject(types.Rejection(code, message))


def effects(effect_list):
    """Follow-up writes of an after-step, e.g. `{"type": "create_record", ...}`."""
    return types.Output_Effects([json.dumps(effect) for effect in effect_list])


def log(level, message):
    """Writes a line to the server's log: level is trace, debug, info, warn or error."""
    host.log(host.Level[level.upper()], message)


class Step:
    """A pipeline step; see the module docstring."""

    name = ""
    version = "0.1.0"
    hooks = ()
    config_schema = None

    def run(self, input):
        raise NotImplementedError

    @classmethod
    def export(cls):
        """The class componentize-py exports as the `step` world."""
        step = cls()
        schema = None if cls.config_schema is None else json.dumps(cls.config_schema)
        hooks = [types.Hook[hook.upper()] for hook in cls.hooks]

        class Exported(wit_world.WitWorld):
            def describe(self):
                return types.Info(cls.name, cls.version, hooks, schema)

            def run(self, raw):
                try:
                    return step.run(Input(raw))
                except Err:
                    raise
                except Exception as error:
                    raise Err(str(error) or type(error).__name__)

        return Exported
