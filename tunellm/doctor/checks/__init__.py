"""Doctor check groups: each module registers one group with `@CHECKS.register`; import it here to enable it.

They run in the order imported: the data first, then the template, then memory and time.
"""

# isort: off
from tunellm.doctor.checks import data  # noqa: F401  (importing a group registers it)
from tunellm.doctor.checks import template  # noqa: F401
from tunellm.doctor.checks import memory  # noqa: F401
# isort: on
