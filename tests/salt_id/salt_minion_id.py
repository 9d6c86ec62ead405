# The oracle of the differential test (tests/salt_id/differential.py): the
# minion id Salt itself computes. Runs under every Salt's own Python (2.7
# for 2019.2.8, 3.x for 3006 and 3008), so it is written for both. Prints
# `ID=<id>` (UTF-8) on its last line.
#
#   salt_minion_id.py DIR                  salt.config.minion_config(DIR/minion),
#                                          as salt-call and the survey call it
#   salt_minion_id.py --salt-minion ARGS   salt-minion's own option parser with
#                                          its command line (-c, the SALT_CONFIG_DIR
#                                          default): what the daemon computes at start
import logging
import os
import sys

logging.disable(logging.CRITICAL)

if sys.argv[1] == "--salt-minion":
    import salt.utils.parsers  # noqa: E402

    parser = salt.utils.parsers.MinionOptionParser()
    parser.parse_args(sys.argv[2:] + ["-l", "quiet"])
    minion_id = parser.config["id"]
else:
    import salt.config  # noqa: E402

    minion_id = salt.config.minion_config(os.path.join(sys.argv[1], "minion"))["id"]

out = getattr(sys.stdout, "buffer", sys.stdout)
if not isinstance(minion_id, bytes):
    minion_id = minion_id.encode("utf-8")
out.write(b"\nID=" + minion_id + b"\n")
