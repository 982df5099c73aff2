import os
import sys

from .cli import main

code = main()
if os.environ.get("TORCHELASTIC_RUN_ID") is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A rank under torchrun ends here without interpreter finalization: gloo's worker thread may
    # still be freeing the last collective's tensors, which takes the GIL, and a thread taking it
    # while the interpreter finalizes is killed through a noexcept frame (std::terminate, SIGABRT
    # after a finished run, 1 torchrun run in 10 on a loaded 2-core box; core dumps:
    # ProcessGroupGloo::runLoop -> ~AsyncWork -> decref_pyobject -> take_gil). The run has closed
    # its files and left the process group by now; only the standard streams need flushing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)
sys.exit(code)
