"""OHIF's ``app-config.js``: the archive's gateway as the viewer's one DICOMweb data source.

The package's own ``app-config.js`` points at a public demo server; the archive never serves
it, but this one, written for the gateway the page came from. The browser tests write the same
for OHIF served from another origin, so both set-ups run one configuration (the README's
Viewer section shows it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

SOURCE_NAME = "dicomrpc"


def app_config(
    dicomweb_url: str, *, bulk_data_uri: bool = True, overrides: Mapping[str, Any] | None = None
) -> str:
    """An ``app-config.js`` whose one data source is the gateway at ``dicomweb_url``.

    The keys are those of OHIF's DICOMweb data source
    (``@ohif/extension-default.dataSourcesModule.dicomweb``) as an archive with QIDO-RS
    ``includefield`` and fuzzy matching, WADO-RS frames and metadata with bulk data URIs is
    configured; ``bulk_data_uri`` turns OHIF's use of those URIs on or off, ``overrides``
    replaces keys of the data source's configuration. The dialogs and the tour OHIF shows on
    top of the viewer (cross-origin isolation, CPU rendering, investigational use) are off:
    they concern the page's hosting, not the archive, and would hide the viewport.
    """
    configuration: dict[str, Any] = {
        "friendlyName": SOURCE_NAME,
        "name": SOURCE_NAME,
        "qidoRoot": dicomweb_url,
        "wadoRoot": dicomweb_url,
        "wadoUriRoot": dicomweb_url,
        "qidoSupportsIncludeField": True,
        "supportsReject": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": True,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": False,
        "omitQuotationForMultipartRequest": True,
        "bulkDataURI": {"enabled": bulk_data_uri},
    }
    configuration.update(overrides or {})
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        # No onboarding tour: its pop-up would sit on the viewport.
        "customizationService": {"ohif.tours": {"$set": []}},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "defaultDataSourceName": SOURCE_NAME,
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": SOURCE_NAME,
                "configuration": configuration,
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"
