"""The local node agent: runs pods bound to simulated GPU nodes as local processes, like a kubelet.

    agent = start_agent(cluster, state_dir)      # from a fixture or the demo; agent.stop() ends it
    python -m glmops_dev.agent --kubeconfig FILE --state-dir DIR [--images FILE]

Modules: :mod:`~glmops_dev.agent.agent` (watch loop, nodes, start/stop), :mod:`~glmops_dev.agent.podworker`
(one pod's lifecycle), :mod:`~glmops_dev.agent.podstatus` (status as the kubelet writes it),
:mod:`~glmops_dev.agent.runtime` (processes), :mod:`~glmops_dev.agent.launcher` (mount, network and UTS namespaces),
:mod:`~glmops_dev.agent.volumes`, :mod:`~glmops_dev.agent.env`, :mod:`~glmops_dev.agent.images`,
:mod:`~glmops_dev.agent.probes`, :mod:`~glmops_dev.agent.logfiles`, :mod:`~glmops_dev.agent.logs_server`,
:mod:`~glmops_dev.agent.kube` (the API calls).
"""

from glmops_dev.agent.agent import AgentConflictError, AgentStartError, NodeAgent, start_agent
from glmops_dev.agent.images import ImageMap, ImageMapError

__all__ = ["AgentConflictError", "AgentStartError", "ImageMap", "ImageMapError", "NodeAgent", "start_agent"]
