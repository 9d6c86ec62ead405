# The oracle of the differential test (tests/salt_id/differential.py): the
# minion id Salt itself computes from a config directory, as salt-minion does
# at start (`salt.config.minion_config(<dir>/minion)`). Runs under every
# Salt's own Python (2.7 for 2019.2.8, 3.x for 3006 and 3008), so it is
# written for both. Prints `ID=<id>` (UTF-8) on its last line.
import logging
import os
import sys

logging.disable(logging.CRITICAL)

import salt.config  # noqa: E402

opts = salt.config.minion_config(os.path.join(sys.argv[1], "minion"))
out = getattr(sys.stdout, "buffer", sys.stdout)
minion_id = opts["id"]
if not isinstance(minion_id, bytes):
    minion_id = minion_id.encode("utf-8")
out.write(b"\nID=" + minion_id + b"\n")
