# Thread count and OpenMP wait policy must be in the environment before torch loads (histo_core/runtime.py).
from histo_core.runtime import configure_process, exit_without_teardown

configure_process()

from histo_core.cli import main  # noqa: E402

exit_without_teardown(main())
