"""The step after a run's last image, still under the folder's lock: the metrics of recon/
(`evaluate: true`, saved as metrics.json) and the HTML report (`report: true`, report/), from one
evaluation."""
from ddfm.common import one_line
from ddfm.metrics.evaluation import EvaluationError, evaluate_protocols, format_table, write_json
from ddfm.present.report import write_report
from ddfm.savefolder.layout import read_record


def evaluate_and_report(config, layout, method, source_dirs, log):
    """method: the ddfm.methods.Method that made the images (named by its label, adding its
    report rows and per-step strips). Returns (the metrics tables as text, whether the report
    failed)."""
    fusion, name = config.fusion, method.label
    if not (fusion["evaluate"] or fusion["report"]):
        return "", False
    warn = lambda message: log(f"warning: {message}")  # noqa: E731
    try:
        results = evaluate_protocols(*source_dirs, {name: layout.recon}, protocols=[fusion["eval_protocol"]],
                                     warn=warn, allow_missing=True)
    except EvaluationError as err:
        log(f"evaluation skipped: {one_line(err)}" if fusion["evaluate"]
            else f"report: no metrics table ({one_line(err)})")
        results = []
    table = ""
    if fusion["evaluate"]:
        if results:
            write_json(results, layout.metrics)
            table = "\n\n".join(format_table(result) for result in results)
        else:  # a metrics.json of earlier images would pass for this folder's
            layout.metrics.unlink(missing_ok=True)
    if not fusion["report"]:
        return table, False
    try:
        record = read_record(layout.root)
        index = write_report(layout.report, results, *source_dirs, {name: layout.recon},
                             tuple(fusion["modalities"]), run_record=record,
                             gifs=layout.gifs(), title=f"Fusion run: {layout.root}",
                             conditions=method.report_strips(layout.progress),
                             method_rows=method.report_rows(record if isinstance(record, dict) else {}))
    except (OSError, EvaluationError) as err:
        log(f"report skipped: {one_line(err)}")
        return table, True
    log(f"report: {index}")
    return table, False
