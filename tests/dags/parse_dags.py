"""Run in a fresh process: parse a dags folder as Airflow does and report, as one JSON line.

python tests/dags/parse_dags.py DAGS_FOLDER
"""

import json
import sys
import time

from airflow.dag_processing.dagbag import DagBag

folder = sys.argv[1]
started = time.perf_counter()
bag = DagBag(dag_folder=folder)
seconds = time.perf_counter() - started
print(
    json.dumps(
        {
            "seconds": seconds,
            "import_errors": bag.import_errors,
            "tensorflow_imported": "tensorflow" in sys.modules,
            "keras_imported": "keras" in sys.modules,
            "pyarrow_imported": "pyarrow" in sys.modules,
            "dags": {
                dag_id: {
                    "tasks": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks},
                    "max_active_tis_per_dag": {t.task_id: t.max_active_tis_per_dag for t in dag.tasks},
                    "max_active_tis_per_dagrun": {t.task_id: t.max_active_tis_per_dagrun for t in dag.tasks},
                    "mapped": sorted(t.task_id for t in dag.tasks if type(t).__name__ == "MappedOperator"),
                    "params": {
                        k: {**dag.params.get_param(k).schema, "description": dag.params.get_param(k).description}
                        for k in dag.params
                    },
                    "schedule": type(dag.timetable).__name__,
                    "tags": sorted(dag.tags),
                }
                for dag_id, dag in bag.dags.items()
            },
        }
    )
)
