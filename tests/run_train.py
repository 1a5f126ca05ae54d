"""Run the train step in a fresh process: `python tests/run_train.py ARGS_JSON [LOGICAL_CPUS]`.

Prints the step's result as the last line of output (JSON). With LOGICAL_CPUS > 1 the CPU is
split into that many logical devices first, so a mirrored strategy has several replicas.
"""

import json
import logging
import sys

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

if len(sys.argv) > 2 and int(sys.argv[2]) > 1:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(sys.argv[2]))

from contrail import train  # noqa: E402 - after the logical devices are configured
from contrail.results import PreprocessResult  # noqa: E402

args = json.loads(sys.argv[1])
args["preprocess"] = PreprocessResult.from_xcom(args["preprocess"])
print(json.dumps(train.run(train.TrainArgs(**args)).to_xcom()))
