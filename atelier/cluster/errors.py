"""The cluster's errors a user sees. Standard library only: the Studio and the front ends catch them without
importing Ray."""


class WorkerLost(RuntimeError):
    """The GPU worker running a job stopped (its process died, its machine left the cluster) before the
    result came back. Nothing of that job was saved; the next jobs go to the workers still running."""


class ClusterRestarted(WorkerLost):
    """The Ray cluster of the GPU workers went away (its head node restarted) during a job. Nothing of that job
    was saved; the front end joins the cluster again for the next job."""
