"""fedunlearn ClientApp: an organization's node. Thin handlers over fedunlearn.training.

Identity comes from the node config (``org`` in deployment, ``partition-id`` in simulation),
never from Flower's node id. Every handler replies with exactly one MetricRecord (and one
ArrayRecord when it returns an adapter).
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedunlearn.config import settings_from_flat
from fedunlearn.errors import DataError, FederationError
from fedunlearn.federation import protocol
from fedunlearn.federation.inbox import attach_outgoing, outbox
from fedunlearn.training.canaries import CANARY_DIRECTION, CANARY_NORM
from fedunlearn.training.client import OrganizationClient, organization_name

__all__ = ["app", "make_app"]


def _settings(context: Context, overrides: Mapping[str, object] | None):
    return settings_from_flat({**dict(context.run_config), **dict(overrides or {})})


def _excluded(cfg: Mapping[str, object]) -> list[str]:
    """Record ids the server says this organization forgot (``exclude-records``, one per line)."""
    return [i for i in str(cfg.get(protocol.EXCLUDE_RECORDS, "")).split("\n") if i]


def _split_vector(arrays):
    """``(adapter state, vector)`` of a query whose vector travels under ``vector/`` keys."""
    n = len(protocol.VECTOR_PREFIX)
    vector = {k[n:]: v for k, v in arrays.items() if k.startswith(protocol.VECTOR_PREFIX)}
    return {k: v for k, v in arrays.items() if not k.startswith(protocol.VECTOR_PREFIX)}, vector


def make_app(overrides: Mapping[str, object] | None = None) -> ClientApp:
    """A ClientApp whose run config is Flower's, updated with ``overrides`` (see server.app)."""
    client = ClientApp()

    @client.query("identify")
    def identify(msg: Message, context: Context) -> Message:
        settings = _settings(context, overrides)
        name = organization_name(settings, context.node_config)
        try:
            org = OrganizationClient.from_node(settings, context.node_config)
        except DataError as exc:  # still say who this node is: the server may not need it (an erased organization)
            return Message(protocol.reply_content(metrics={}, config={"org": name, "data-sha256": "",
                                                                      "data-error": str(exc)}), reply_to=msg)
        return Message(protocol.reply_content(metrics={}, config={"org": org.name, "data-sha256": org.fingerprint}),
                       reply_to=msg)

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        org = OrganizationClient.from_node(_settings(context, overrides), context.node_config)
        cfg = protocol.config_of(msg)
        if cfg.get("org") not in (None, org.name):
            raise FederationError(f"train message for {cfg.get('org')!r} reached organization {org.name!r}")
        history, budget_error = [], ()
        if org.settings.dp.record_level:  # the budget counts all earlier DP rounds: server's or node's account
            from fedunlearn.training.dp import PrivacyBudgetError, node_history, worst_history

            history, budget_error = worst_history(protocol.dp_history_of(cfg), node_history(context.state),
                                                  delta=org.settings.dp.delta), (PrivacyBudgetError,)
        try:
            new_state, fit = org.train(
                protocol.state_of(msg), seed=int(cfg["seed"]), epochs=int(cfg.get("epochs", 0)) or None,
                lr=float(cfg.get("lr", 0.0)) or None, batch_size=int(cfg.get("batch-size", 0)) or None,
                exclude=_excluded(cfg), dp_history=history,
                canary={k: cfg[k] for k in (CANARY_DIRECTION, CANARY_NORM) if k in cfg},  # canary orgs only
            )
        except budget_error as exc:  # refused before training: a clean "budget exhausted" reply
            return Message(protocol.budget_refusal_content(reason=str(exc), epsilon=exc.epsilon,
                                                           max_epsilon=exc.max_epsilon), reply_to=msg)
        metrics = {
            "num-examples": fit.num_examples, "train-loss": fit.loss_last_epoch,
            "train-loss-first": fit.loss_first_epoch, "steps": fit.steps, "tokens": fit.tokens,
            "seconds": fit.seconds,
        }
        if getattr(fit, "dp_steps", 0):  # record-level DP-SGD: the mechanism and this node's ε so far
            from fedunlearn.training.dp import dp_reply_metrics

            metrics.update(dp_reply_metrics(fit, context.state, delta=org.settings.dp.delta))
        return Message(protocol.reply_content(state=new_state, metrics=metrics), reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        org = OrganizationClient.from_node(_settings(context, overrides), context.node_config)
        result = org.evaluate(protocol.state_of(msg))
        metrics = {"num-examples": result.num_examples, "eval-loss": result.loss,
                   "eval-perplexity": result.perplexity, "tokens": result.tokens}
        # a signed erasure request the organization left in its outbox rides on this reply
        box = outbox(context.node_config, org.settings.run.dir, org.name)
        return Message(protocol.reply_content(metrics=metrics, config=attach_outgoing(box)), reply_to=msg)

    @client.query("grad")
    def grad(msg: Message, context: Context) -> Message:
        org = OrganizationClient.from_node(_settings(context, overrides), context.node_config)
        result = org.gradient(protocol.state_of(msg), exclude=_excluded(protocol.config_of(msg)))
        metrics = {"num-examples": result.num_examples, "train-loss": result.loss}
        return Message(protocol.reply_content(state=result.gradient, metrics=metrics), reply_to=msg)

    @client.query("hvp")
    def hvp(msg: Message, context: Context) -> Message:
        org = OrganizationClient.from_node(_settings(context, overrides), context.node_config)
        state, vector = _split_vector(protocol.state_of(msg))
        exclude = _excluded(protocol.config_of(msg))
        product = org.hvp(state, vector, exclude=exclude)
        return Message(protocol.reply_content(state=product, metrics={"num-examples": len(org.records(exclude))}),
                       reply_to=msg)

    @client.query("solve")
    def solve(msg: Message, context: Context) -> Message:
        org = OrganizationClient.from_node(_settings(context, overrides), context.node_config)
        state, g = _split_vector(protocol.state_of(msg))
        cfg = protocol.config_of(msg)
        res = org.solve(state, g, exclude=_excluded(cfg), curvature=str(cfg.get("curvature", "fisher")),
                        damping=float(cfg["damping"]), iterations=int(cfg["iterations"]),
                        tolerance=float(cfg["tolerance"]), hessian_scale=float(cfg.get("hessian-scale", 1.0)),
                        solver=str(cfg.get("solver", "cg")), lissa_scale=float(cfg.get("lissa-scale", 10.0)))
        arrays = {**res.x, **{protocol.GRADIENT_PREFIX + k: v for k, v in res.gradient.items()}}
        metrics = {"num-examples": res.num_examples, "train-loss": res.loss, "residual": res.solve.residual,
                   "iterations": res.solve.iterations, "passes": res.passes,
                   "steps": res.passes * -(-res.num_examples // org.settings.train.batch_size)}
        return Message(protocol.reply_content(state=arrays, metrics=metrics), reply_to=msg)

    @client.train("forget")
    def forget(msg: Message, context: Context) -> Message:
        org = OrganizationClient.from_node(_settings(context, overrides), context.node_config)
        cfg = protocol.config_of(msg)
        if cfg.get("org") not in (None, org.name):
            raise FederationError(f"forget message for {cfg.get('org')!r} reached organization {org.name!r}")
        ids = [i for i in str(cfg.get("records", "")).split("\n") if i]
        new_state, res = org.forget(
            protocol.state_of(msg), ids, method=str(cfg["method"]), seed=int(cfg["seed"]),
            epochs=int(cfg["epochs"]), lr=float(cfg["lr"]), beta=float(cfg.get("beta", 0.1)),
            retain_weight=float(cfg.get("retain-weight", 1.0)), exclude=_excluded(cfg),
        )
        metrics = {"num-examples": res.num_forget, "steps": res.steps, "seconds": res.seconds,
                   "num-retain": res.num_retain, "forget-loss-before": res.forget_loss_before,
                   "forget-loss-after": res.forget_loss_after,
                   "retain-loss-before": res.retain_loss_before if res.num_retain else 0.0,
                   "retain-loss-after": res.retain_loss_after if res.num_retain else 0.0}
        return Message(protocol.reply_content(state=new_state, metrics=metrics), reply_to=msg)

    return client


app = make_app()
