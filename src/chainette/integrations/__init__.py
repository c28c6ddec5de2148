"""Optional bridges to other tools, fed by the event stream or a finished run: OpenTelemetry
(``otel.py``, ``pip install 'chainette[otel]'``) and MLflow (``mlflow.py``,
``pip install 'chainette[mlflow]'``). Each imports its library only when used."""
