"""IAM roles and profiles, SSM parameters (control rods), SNS topics and CloudWatch alarms."""

from __future__ import annotations

from bulkhead.localcloud.translators import Inputs, State, Target, aws_tags, register


def _role(target: Target, inputs: Inputs) -> tuple[str, State]:
    name = inputs.get("name") or target.physical_name(64)
    role = target.client("iam").create_role(
        RoleName=name, AssumeRolePolicyDocument=inputs["assumeRolePolicy"], Tags=aws_tags(inputs)
    )["Role"]
    return name, {**inputs, "name": name, "arn": role["Arn"], "uniqueId": role["RoleId"]}


def _delete_role(target: Target, name: str, state: State) -> None:
    iam = target.client("iam")
    for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    iam.delete_role(RoleName=name)


register("aws:iam/role:Role", _role, _delete_role)


def _role_policy(target: Target, inputs: Inputs) -> tuple[str, State]:
    name = inputs.get("name") or target.physical_name(128)
    target.client("iam").put_role_policy(RoleName=inputs["role"], PolicyName=name, PolicyDocument=inputs["policy"])
    return f"{inputs['role']}:{name}", {**inputs, "name": name}


def _delete_role_policy(target: Target, policy_id: str, state: State) -> None:
    role, name = policy_id.split(":", 1)
    target.client("iam").delete_role_policy(RoleName=role, PolicyName=name)


register("aws:iam/rolePolicy:RolePolicy", _role_policy, _delete_role_policy)


def _profile(target: Target, inputs: Inputs) -> tuple[str, State]:
    iam = target.client("iam")
    name = inputs.get("name") or target.physical_name(128)
    profile = iam.create_instance_profile(InstanceProfileName=name, Tags=aws_tags(inputs))["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=inputs["role"])
    return name, {**inputs, "name": name, "arn": profile["Arn"]}


def _delete_profile(target: Target, name: str, state: State) -> None:
    iam = target.client("iam")
    iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=state["role"])
    iam.delete_instance_profile(InstanceProfileName=name)


register("aws:iam/instanceProfile:InstanceProfile", _profile, _delete_profile)


def _parameter(target: Target, inputs: Inputs) -> tuple[str, State]:
    ssm = target.client("ssm")
    ssm.put_parameter(
        Name=inputs["name"],
        Value=str(inputs["value"]),
        Type=inputs.get("type", "String"),
        Description=inputs.get("description", ""),
        Tags=aws_tags(inputs),
    )
    arn = ssm.get_parameter(Name=inputs["name"])["Parameter"]["ARN"]
    return inputs["name"], {**inputs, "arn": arn}


register("aws:ssm/parameter:Parameter", _parameter, lambda t, i, s: t.client("ssm").delete_parameter(Name=i))


def _topic(target: Target, inputs: Inputs) -> tuple[str, State]:
    attributes = {"KmsMasterKeyId": inputs["kmsMasterKeyId"]} if inputs.get("kmsMasterKeyId") else {}
    name = inputs.get("name") or target.physical_name(256)
    arn = target.client("sns").create_topic(Name=name, Attributes=attributes, Tags=aws_tags(inputs))["TopicArn"]
    return arn, {**inputs, "name": name, "arn": arn}


register("aws:sns/topic:Topic", _topic, lambda t, i, s: t.client("sns").delete_topic(TopicArn=i))


def _subscription(target: Target, inputs: Inputs) -> tuple[str, State]:
    arn = target.client("sns").subscribe(
        TopicArn=inputs["topic"], Protocol=inputs["protocol"], Endpoint=inputs["endpoint"], ReturnSubscriptionArn=True
    )["SubscriptionArn"]
    return arn, {**inputs, "arn": arn}


register(
    "aws:sns/topicSubscription:TopicSubscription",
    _subscription,
    lambda t, i, s: t.client("sns").unsubscribe(SubscriptionArn=i),
)


def _alarm(target: Target, inputs: Inputs) -> tuple[str, State]:
    request = {
        "AlarmName": inputs.get("name") or target.physical_name(255),
        "Namespace": inputs["namespace"],
        "MetricName": inputs["metricName"],
        "Dimensions": [{"Name": k, "Value": v} for k, v in (inputs.get("dimensions") or {}).items()],
        "Period": int(inputs["period"]),
        "EvaluationPeriods": int(inputs["evaluationPeriods"]),
        "Threshold": float(inputs["threshold"]),
        "ComparisonOperator": inputs["comparisonOperator"],
        "TreatMissingData": inputs.get("treatMissingData", "missing"),
        "AlarmActions": list(inputs.get("alarmActions") or []),
        "OKActions": list(inputs.get("okActions") or []),
        "Tags": aws_tags(inputs),
    }
    if inputs.get("statistic"):
        request["Statistic"] = inputs["statistic"]
    if inputs.get("extendedStatistic"):
        request["ExtendedStatistic"] = inputs["extendedStatistic"]
    cloudwatch = target.client("cloudwatch")
    cloudwatch.put_metric_alarm(**request)
    # AWS starts an alarm with no data yet at INSUFFICIENT_DATA (moto at OK): its first evaluation is then a change.
    cloudwatch.set_alarm_state(AlarmName=request["AlarmName"], StateValue="INSUFFICIENT_DATA",
                               StateReason="Unchecked: Initial alarm creation")  # fmt: skip
    (alarm,) = cloudwatch.describe_alarms(AlarmNames=[request["AlarmName"]])["MetricAlarms"]
    return request["AlarmName"], {**inputs, "name": request["AlarmName"], "arn": alarm["AlarmArn"]}


register(
    "aws:cloudwatch/metricAlarm:MetricAlarm",
    _alarm,
    lambda t, i, s: t.client("cloudwatch").delete_alarms(AlarmNames=[i]),
)


def _queue(target: Target, inputs: Inputs) -> tuple[str, State]:
    name = inputs.get("name") or target.physical_name(80)
    attributes = {"MessageRetentionPeriod": str(int(inputs.get("messageRetentionSeconds") or 345600))}
    if inputs.get("sqsManagedSseEnabled"):
        attributes["SqsManagedSseEnabled"] = "true"
    sqs = target.client("sqs")
    url = sqs.create_queue(QueueName=name, Attributes=attributes, tags=dict(inputs.get("tags") or {}))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, {**inputs, "name": name, "arn": arn, "url": url}


register("aws:sqs/queue:Queue", _queue, lambda t, i, s: t.client("sqs").delete_queue(QueueUrl=i))


def _queue_policy(target: Target, inputs: Inputs) -> tuple[str, State]:
    target.client("sqs").set_queue_attributes(QueueUrl=inputs["queueUrl"], Attributes={"Policy": inputs["policy"]})
    return inputs["queueUrl"], dict(inputs)


register(
    "aws:sqs/queuePolicy:QueuePolicy",
    _queue_policy,
    lambda t, i, s: t.client("sqs").set_queue_attributes(QueueUrl=i, Attributes={"Policy": ""}),
)
