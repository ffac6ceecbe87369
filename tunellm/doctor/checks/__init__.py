"""Doctor check groups: each module registers one group with `@CHECKS.register`; import it here to enable it."""

from tunellm.doctor.checks import data, memory, template  # noqa: F401  (importing a group registers it)
