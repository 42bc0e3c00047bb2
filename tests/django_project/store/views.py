from django.db import transaction
from django.http import HttpRequest, JsonResponse

from store.models import Order
from store.tasks import send_receipt


class Refused(Exception):
    pass


def place_order(request: HttpRequest) -> JsonResponse:
    """Store an order and enqueue its receipt in one transaction; ?fail=1 fails after both."""
    try:
        with transaction.atomic():
            order = Order.objects.create(customer=request.POST["customer"])
            result = send_receipt.enqueue(order.id, greeting="Hello")
            if request.POST.get("fail"):
                raise Refused("payment declined")
    except Refused:
        return JsonResponse({"error": "payment declined"}, status=402)
    return JsonResponse({"order": order.id, "result_id": result.id})
