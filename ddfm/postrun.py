"""The step after a run's last image, still under the folder's lock: the metrics of recon/
(`evaluate: true`, saved as metrics.json) and the HTML report (`report: true`, report/), from one
evaluation."""
from ddfm.messages import one_line
from ddfm.methods.ccf.record import condition_strips
from ddfm.metrics.evaluation import EvaluationError, evaluate_protocols, format_table, write_json
from ddfm.present.report import write_report
from ddfm.savefolder.layout import read_record


def evaluate_and_report(config, layout, method, source_dirs, log):
    """Returns (the metrics tables as text, whether the report failed)."""
    fusion = config.fusion
    if not (fusion["evaluate"] or fusion["report"]):
        return "", False
    warn = lambda message: log(f"warning: {message}")  # noqa: E731
    try:
        results = evaluate_protocols(*source_dirs, {method: layout.recon}, protocols=[fusion["eval_protocol"]],
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
        index = write_report(layout.report, results, *source_dirs, {method: layout.recon},
                             tuple(fusion["modalities"]), run_record=read_record(layout.root),
                             gifs=layout.gifs(), title=f"Fusion run: {layout.root}",
                             conditions=condition_strips(layout.progress))
    except (OSError, EvaluationError) as err:
        log(f"report skipped: {one_line(err)}")
        return table, True
    log(f"report: {index}")
    return table, False
