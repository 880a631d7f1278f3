"""The library's stated public surface (``__all__``): the deployed releases' names stay public."""

from __future__ import annotations

import charms.istio_beacon_k8s.v0.service_mesh as library

# Every public name of the deployed library (its Charmhub documentation), which charms import.
DEPLOYED = {
    "MeshType",
    "Method",
    "Endpoint",
    "PolicyTargetType",
    "Policy",
    "AppPolicy",
    "UnitPolicy",
    "MeshPolicy",
    "ServiceMeshProviderAppData",
    "CMRData",
    "ServiceMeshConsumer",
    "ServiceMeshProvider",
    "PolicyResourceManager",
    "build_mesh_policies",
    "reconcile_charm_labels",
    "get_default_labels",
    "get_data_from_cmr_relation",
    "label_configmap_name_template",
}


def test_every_deployed_name_is_public_and_importable():
    assert set(library.__all__) >= DEPLOYED
    for name in library.__all__:
        assert getattr(library, name) is not None, name


def test_helpers_the_beacon_reused_are_not_promised_to_consumers():
    public = set(library.__all__)
    for name in ("display_text", "load_json", "http_status_code", "MAX_DISPLAY_LENGTH"):
        assert name not in public
        assert not hasattr(library, name), name


def test_all_lists_every_public_name_the_module_defines():
    defined = {
        name
        for name, value in vars(library).items()
        if not name.startswith("_")
        and getattr(value, "__module__", library.__name__) == library.__name__
        and not isinstance(value, type(library))
    }
    # charmcraft's metadata, and module-level names that are no API.
    metadata = {"LIBID", "LIBAPI", "LIBPATCH", "PYDEPS", "logger", "annotations", "TYPE_CHECKING"}
    assert defined - metadata - set(library.__all__) == set()
