"""Run reporting: TensorBoard + JSONL writers, PNG plots, the final summary."""
from jaxmodels.report.plots import plot_confusion_matrix, plot_history, plot_predictions
from jaxmodels.report.summary import format_summary, write_summary
from jaxmodels.report.writers import (JsonlWriter, MultiWriter, TensorBoardWriter, create_writer,
                                      prepare_workdir, read_logged_rows)
from jaxmodels.report.throughput import (PEAK_FLOPS, compiled_flops, peak_flops,
                                         throughput_summary, utilisation)

__all__ = ['compiled_flops', 'create_writer', 'format_summary', 'JsonlWriter', 'MultiWriter',
           'peak_flops', 'PEAK_FLOPS', 'plot_confusion_matrix', 'plot_history', 'plot_predictions',
           'prepare_workdir', 'read_logged_rows', 'TensorBoardWriter', 'throughput_summary',
           'utilisation', 'write_summary']
