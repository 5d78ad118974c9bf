"""{{ name }}: refuses incidents without a category and routes the rest to the team the module
config names for it."""

from usm import Step, reject, set_fields


class Route(Step):
    name = "{{ name }}"
    version = "0.1.0"
    hooks = ("create",)

    def run(self, input):
        category = input.field_str("category")
        if category is None:
            return reject("missing_category", "choose a category for the incident")
        teams = input.config.get("teams")
        # A raised exception fails the write with its message.
        if not isinstance(teams, dict):
            raise ValueError("config: teams must map categories to groups")
        return set_fields({"assignment_group": teams.get(category, "service-desk")})


WitWorld = Route.export()
