import os
import sys

from .app.runtime import launched_by_torchrun
from .cli import main

code = main()
if launched_by_torchrun():
    # A rank under torchrun ends here without interpreter finalization: gloo's worker thread may
    # still be freeing the last collective's tensors, which takes the GIL, and a thread taking it
    # while the interpreter finalizes is killed through a noexcept frame (std::terminate, SIGABRT
    # after a finished run, 1 torchrun run in 10 on a loaded 2-core box; core dumps:
    # ProcessGroupGloo::runLoop -> ~AsyncWork -> decref_pyobject -> take_gil). The run has closed
    # its files and left the process group by now; only the standard streams need flushing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
