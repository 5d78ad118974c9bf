"""Example usm step in Python: sets an incident's `priority` (P1–P5) from its `impact` and
`urgency` through the matrix in the module config, and flags P1 as a major incident. The same
step as `../priority` (Rust) and `../priority-js` (JavaScript): all three give the same patches.
"""

from usm import Step, log, proceed, reject, set_fields


class Priority(Step):
    name = "priority"
    version = "0.1.0"
    hooks = ("create", "update")
    config_schema = {
        "type": "object",
        "required": ["matrix"],
        "properties": {
            "matrix": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "pattern": "^P[1-5]$"},
                },
            }
        },
    }

    def run(self, input):
        impact, urgency = input.field_str("impact"), input.field_str("urgency")
        if impact is None or urgency is None:
            return proceed()
        priority = input.config["matrix"].get(impact, {}).get(urgency)
        if priority is None:
            return reject(
                "unknown_priority",
                f"no priority is defined for impact {impact} and urgency {urgency}",
            )
        if input.field_str("priority") == priority:
            return proceed()
        if priority == "P1":
            log("info", f"major incident: {input.record.get('title')}")
        return set_fields({"priority": priority, "major_incident": priority == "P1"})


WitWorld = Priority.export()
