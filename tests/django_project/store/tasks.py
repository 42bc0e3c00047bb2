"""The project's tasks: what `manage.py pgq_work` finds and runs."""

import os
from typing import Any

from pgq.contrib.django.compat import TaskContext, task
from store.models import Order


class OrderMissing(Exception):
    pass


@task()
def send_receipt(order_id: int, *, greeting: str = "Thanks") -> dict[str, Any]:
    order = Order.objects.filter(id=order_id).first()
    if order is None:
        raise OrderMissing(f"no order {order_id}")
    order.receipt_sent = True
    order.save()
    return {"to": order.customer, "text": f"{greeting}, {order.customer}!", "pid": os.getpid()}


@task(queue_name="emails", priority=10)
async def shout(word: str) -> str:
    return word.upper()


@task(takes_context=True)
def attempt_number(context: TaskContext, label: str) -> dict[str, Any]:
    return {"label": label, "attempt": context.attempt, "id": context.task_result.id}
