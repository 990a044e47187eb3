"""Serving through TF Serving's REST API (docs/serving.md).

* `models.config`, `batching_parameters.txt`, `monitoring.config`: real TF Serving's files.
* `client`: a stdlib REST client for TF Serving and the dev server alike.
* `rest_api`, `servables`, `http_app`, `model_config`: `tfvctr serve`, the dev server.
* `demo`: the REST step of `make demo`.
"""
