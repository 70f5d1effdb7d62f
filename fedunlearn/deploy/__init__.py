"""Real Flower deployments: key material, a local SuperLink + SuperNodes, a warm task executor."""

from fedunlearn.deploy.local import CONNECTION, LocalDeployment, free_port, run_config_arg
from fedunlearn.deploy.pki import NodeKeys, make_ca, make_node_keys, make_server_certificate

__all__ = ["CONNECTION", "LocalDeployment", "NodeKeys", "free_port", "make_ca", "make_node_keys",
           "make_server_certificate", "run_config_arg"]
